"""The seam between the engine and a voice family (Piper, Kokoro, ...).

A family is one module that finds its voices on disk (``discover``), names voices it can
make on request (``resolve``, e.g. blends) and loads one (``load``). A loaded voice turns
text into pieces (its own units: phoneme ids, phoneme symbols) and synthesizes a piece, with
each phoneme's samples where the model predicts durations. The engine orchestrates: pool,
cache, fallback; it knows nothing of a family's model.

Every ONNX call of every family goes through ``run_session``: it picks the session sized by
the pool's lease, and its ``RunOptions`` is aborted by the line's ``CancelToken`` (skip) and
by the pool (preemption for more urgent work).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime

from ..timings import PhonemeUnit, WordSpan
from ..workers import Lease, Preempted

__all__ = [
    "CancelToken",
    "Delivery",
    "LoadedVoice",
    "Sessions",
    "SynthesisCancelled",
    "SynthesisError",
    "Timed",
    "UnknownVoice",
    "VoiceFamily",
    "VoiceInfo",
    "VoiceSource",
    "release_freed_memory",
    "run_session",
    "session_options",
]


class UnknownVoice(LookupError):
    """No voice of that name in the catalog."""


class SynthesisError(RuntimeError):
    """A voice failed to load or to synthesize."""


class SynthesisCancelled(Exception):
    """The line was skipped or cancelled while it was being synthesized."""


class CancelToken:
    """Cancels one line's synthesis, including ONNX calls that are running right now."""

    def __init__(self) -> None:
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._running: list[onnxruntime.RunOptions] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        with self._lock:
            self._cancelled.set()
            for run_options in self._running:
                run_options.terminate = True  # aborts a running session.run in ~2 ms

    @contextlib.contextmanager
    def watching(self, run_options: onnxruntime.RunOptions) -> Iterator[None]:
        """While inside, ``cancel`` aborts the call that runs with ``run_options``."""
        with self._lock:
            run_options.terminate = self._cancelled.is_set()
            self._running.append(run_options)
        try:
            yield
        finally:
            with self._lock:
                self._running.remove(run_options)

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise SynthesisCancelled


@dataclass(frozen=True)
class VoiceInfo:
    """What a client may know about a voice (never its path)."""

    name: str
    language: str
    sample_rate: int
    speakers: list[str]
    quality: str | None = None
    family: str = "piper"
    """The voice family (module in ``dialogue_tts.voices``) that says it."""
    gender: str | None = None
    """"female" or "male" where the voice's maker says so."""
    speaker_ids: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Speaker name -> id, for multi-speaker voices."""
    espeak_voice: str = field(default="", compare=False, repr=False)
    """The espeak-ng voice that reads its text ("en-us"); empty if not an espeak voice."""
    phonemes: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The phoneme symbols the model knows, for lexicon entries."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "speakers": self.speakers,
        }
        if self.quality:
            data["quality"] = self.quality
        data["family"] = self.family
        if self.gender:
            data["gender"] = self.gender
        return data


@dataclass(frozen=True)
class VoiceSource:
    """A voice the catalog can load: what clients see, and the files it is made of."""

    info: VoiceInfo
    files: tuple[Path, ...]
    """Every file whose contents shape the voice's audio (the disk cache's key)."""
    options: tuple[tuple[str, Any], ...] = ()
    """Family-specific settings that shape the audio too (a blend's weights)."""


@dataclass(frozen=True)
class Delivery:
    """How a line is spoken, besides its text and voice: every setting that changes the audio.

    Volume is not here: it is a gain applied after synthesis (and after any cache).
    """

    rate: float = 1.0
    """Speaking-rate multiplier: 2.0 is twice as fast."""
    pitch: float = 1.0
    """Pitch multiplier, duration kept: synthesize slower by ``pitch``, then resample."""
    noise_scale: float | None = None
    """Piper's noise_scale (voice variation); None is the voice's own setting."""
    noise_w: float | None = None
    """Piper's noise_w (phoneme-length variation); None is the voice's own setting."""
    speaker_id: int | None = None
    """Speaker of a multi-speaker voice; None is the voice's default speaker."""


Timed = tuple[np.ndarray, list[PhonemeUnit]]
"""A piece's audio and its phonemes' samples (empty where the model gives no durations)."""


class LoadedVoice(Protocol):
    """A voice ready to speak. Thread-safe: pieces of several lines run at once."""

    info: VoiceInfo
    gain: float
    """Applied to every piece (after any cache): brings the voice to a common level."""
    timed: bool
    """Pieces carry phoneme timings (the model predicts durations)."""
    digest: str | None
    """Content address of the voice (``VoiceSource``), set by the engine for its disk cache."""
    calibration: Any
    """JSON-able measurements worth keeping between runs (see ``VoiceFamily.load``); or None."""

    @property
    def sample_rate(self) -> int: ...

    def first_piece(
        self,
        text: str,
        first: bool,
        delivery: Delivery,
        cancel: CancelToken | None = None,
        words: bool = False,
        lease: Lease | None = None,
    ) -> tuple[Sequence[Any], Timed | None, list[WordSpan]]:
        """Split ``text`` into pieces (clause-sized units), synthesize the first (None when
        there are none) and, if ``words``, say where each of its words came from in ``text``.
        ``first`` if this part opens the line (its first piece is kept short)."""
        ...

    def infer_timed(
        self,
        piece: Any,
        delivery: Delivery,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> Timed:
        """One piece's audio at the voice's rate (raises SynthesisCancelled, Preempted)."""
        ...

    def add_session(self, threads: int) -> None:
        """Open a session with ``threads`` intra-op threads for calls of that size."""
        ...

    def release_memory(self, lease: Lease) -> None:
        """Hand back working memory kept from earlier calls (the pool calls this once it
        has been idle a while; see ``Sessions.release_memory``)."""
        ...


class VoiceFamily(Protocol):
    """One kind of voice model. Register a new one in ``dialogue_tts.voices.FAMILIES``."""

    name: str

    def discover(self, voices_dir: Path) -> tuple[list[VoiceSource], set[Path]]:
        """The voices in a voices folder, and the model files it claimed (the catalog warns
        about ``*.onnx`` files that no family claims)."""
        ...

    def resolve(self, name: str, known: Mapping[str, VoiceSource]) -> VoiceSource | None:
        """A voice that is not listed but can be made on request (a blend), or None."""
        ...

    def load(self, source: VoiceSource, threads: int, calibration: Any = None) -> LoadedVoice:
        """Load (and warm up) a voice; blocking. ``calibration`` is what an earlier load's
        ``calibration`` was, read back from the disk cache (check it before use)."""
        ...

    def calibration_record(self, digest: str) -> str | None:
        """The disk-cache record name of a voice's calibration, or None if it has none."""
        ...


def session_options(threads: int) -> onnxruntime.SessionOptions:
    """Session options for a voice model on a machine shared with a game."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Every piece has a different length, so onnxruntime's memory pattern (planned for
    # one input shape) only grows: off, RSS after the corpus is 224 MiB instead of 274.
    options.enable_mem_pattern = False
    # A game shares the machine: idle intra-op threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def run_session(
    session: onnxruntime.InferenceSession,
    inputs: Mapping[str, np.ndarray],
    voice_name: str,
    cancel: CancelToken | None = None,
    lease: Lease | None = None,
) -> list[Any]:
    """One ONNX call that the line's ``cancel`` and the pool's ``lease`` can abort.

    Raises SynthesisCancelled if ``cancel`` aborted it, ``Preempted`` if the pool aborted
    it for more urgent work, and SynthesisError if the model failed.
    """
    if cancel is not None:
        cancel.raise_if_cancelled()
    run_options = onnxruntime.RunOptions()
    if lease is not None and lease.trim:
        # The arena keeps the largest working set it ever had (hundreds of MiB after a busy
        # spell of long pieces): hand the unused part back at the end of this call. The
        # pool sets this only for the small call it makes once it has gone idle
        # (``Sessions.release_memory``): shrinking after every call cost batch renders about
        # 12% more CPU, in page faults as the arena grew back.
        run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    watching = cancel.watching(run_options) if cancel is not None else contextlib.nullcontext()
    with watching:
        if lease is not None:
            lease.on_preempt(functools.partial(setattr, run_options, "terminate", True))
        try:
            outputs = list(session.run(None, dict(inputs), run_options))
            if lease is not None and lease.trim:
                trim_heap()  # what the arena handed back is freed to the system only then
            return outputs
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise SynthesisCancelled from exc
            if lease is not None and lease.preempted:
                raise Preempted from exc
            raise SynthesisError(f"voice {voice_name!r} failed: {exc}") from exc
        finally:
            if lease is not None:
                lease.on_preempt(None)


class Sessions:
    """A model's onnxruntime sessions, one per intra-op thread count (see ``add``), and the
    smallest call made on them, rerun to hand their working memory back when idle."""

    def __init__(self, threads: int, session: onnxruntime.InferenceSession) -> None:
        self.default = session
        self._by_threads = {threads: session}
        self._lock = threading.Lock()
        self._smallest: dict[str, np.ndarray] | None = None
        self._used = False
        """Calls ran since memory was last handed back."""

    def add(self, threads: int, session: onnxruntime.InferenceSession) -> None:
        self._by_threads.setdefault(threads, session)

    def __contains__(self, threads: int) -> bool:
        return threads in self._by_threads

    def pick(self, lease: Lease | None) -> onnxruntime.InferenceSession:
        """The session sized for the lease's call; the first one until that one is open."""
        if lease is not None and lease.threads in self._by_threads:
            return self._by_threads[lease.threads]
        return self.default

    def run(
        self,
        inputs: Mapping[str, np.ndarray],
        voice_name: str,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> list[Any]:
        """``run_session`` on the session the lease is sized for."""
        with self._lock:
            self._used = True
            if self._smallest is None or _size(inputs) < _size(self._smallest):
                self._smallest = {name: np.array(value) for name, value in inputs.items()}
        return run_session(self.pick(lease), inputs, voice_name, cancel, lease)

    def release_memory(self, voice_name: str, lease: Lease) -> None:
        """Hand back the working memory every session's arena kept from its largest call,
        by rerunning the smallest call made so far with arena shrinkage on; a no-op when no
        call ran since last time. ``lease``: the pool's idle lease (``trim`` set). Raises
        ``Preempted`` if the pool needs the core back."""
        with self._lock:
            smallest, used, self._used = self._smallest, self._used, False
        if smallest is None or not used:
            return
        try:
            for session in list(self._by_threads.values()):
                run_session(session, smallest, voice_name, lease=lease)
        except Preempted:
            with self._lock:
                self._used = True  # not handed back yet: the next idle spell tries again
            raise


def _size(inputs: Mapping[str, np.ndarray]) -> int:
    return sum(np.asarray(value).size for value in inputs.values())


def release_freed_memory() -> None:
    """Give memory Python has freed back to the system (glibc only; elsewhere a no-op)."""
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return the C heap's free memory to the system (glibc keeps it otherwise; elsewhere a
    no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
