"""Synthesis orchestration: voices of every family loaded once, lines run on the inference
pool, prepared lines cached, a failing voice replaced by the fallback.

What a voice is (its model, its phonemes, its ONNX call) belongs to its family module in
``dialogue_tts.voices``; the engine sees only the ``LoadedVoice`` protocol. Every ONNX call
runs on the pool (``workers.py``) and can be aborted mid-call, by a skip (``CancelToken``)
or by more urgent work (preemption).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import numpy as np

from .audio import apply_gain, fade_edges, resample
from .cache import DiskCache, LinesInPreparation, PreparedLines, file_digest, line_key
from .text import Part, Pause, Spoken
from .timings import Piece, WordSpan, word_units
from .voices import FAMILIES
from .voices.family import (
    CancelToken,
    Delivery,
    LoadedVoice,
    SynthesisCancelled,
    SynthesisError,
    Timed,
    UnknownVoice,
    VoiceFamily,
    VoiceInfo,
    VoiceSource,
)
from .voices.piper import DEFAULT_VOICE_NAME, embedded_voice
from .workers import InferencePool, Lease, Priority, PriorityKey, run_niced

__all__ = [
    "DEFAULT_VOICE_NAME",
    "VOICES_DIR_ENV",
    "CancelToken",
    "Delivery",
    "Engine",
    "LoadedVoice",
    "SynthesisCancelled",
    "SynthesisError",
    "SynthesisRequest",
    "UnknownVoice",
    "VoiceCatalog",
    "VoiceInfo",
    "VoiceSource",
    "source_digest",
]

_LOGGER = logging.getLogger(__name__)

VOICES_DIR_ENV: Final = "DIALOGUE_TTS_VOICES"
DEFAULT_CACHE_BYTES: Final = 64 * 1024 * 1024
"""Prepared lines kept in memory (float32: ~12 minutes of 22.05 kHz speech)."""
_MAX_PENDING_WRITES: Final = 8
"""Disk-cache writes in flight; past this a line is simply not cached."""


def _background() -> tuple[Priority, float]:
    return Priority.BACKGROUND, 0.0


def _current() -> tuple[Priority, float]:
    return Priority.CURRENT, 0.0


@dataclass(frozen=True)
class SynthesisRequest:
    """One line to synthesize, already stripped of markup."""

    parts: list[Part]
    voice: str
    delivery: Delivery = dataclasses.field(default_factory=Delivery)
    volume: float = 1.0
    fallback_voice: str | None = None
    """Voice to say the line with if ``voice`` fails before any of its audio was made."""
    sample_rate: int | None = None
    """Resample the output to this rate; None keeps the voice's rate. Like volume, applied
    after synthesis and after the cache."""
    words: bool = False
    """Map the pieces' words back to the text (costs a few ms per line: off unless asked)."""


class VoiceCatalog:
    """The voices a server offers: the embedded default, the voices every family finds in a
    voices folder, and voices a family makes on request (a Kokoro blend).

    Requests name voices; names only ever index this catalog, so no request can reach a
    file outside the configured folder.
    """

    def __init__(
        self, voices_dir: Path | None = None, families: Sequence[VoiceFamily] = FAMILIES
    ) -> None:
        """``families`` replaces the registered ones (``voices.FAMILIES``)."""
        self.families = {family.name: family for family in families}
        self._sources: dict[str, VoiceSource] = {}
        default = embedded_voice()
        self._sources[default.info.name] = default
        self.default_voice = default.info.name
        if voices_dir is not None:
            self._scan(voices_dir)

    def _scan(self, voices_dir: Path) -> None:
        claimed: set[Path] = set()
        for family in self.families.values():
            found, files = family.discover(voices_dir)
            claimed |= files
            for source in found:
                if source.info.name in self._sources:
                    _LOGGER.warning("Voice %s in %s shadows another", source.info.name, voices_dir)
                self._sources[source.info.name] = source
        for model in sorted(set(voices_dir.glob("*.onnx")) - claimed):
            _LOGGER.warning(
                "Skipping voice %s: no %s beside it, and no other voice family knows it",
                model, model.name + ".json",
            )  # fmt: skip

    def names(self) -> list[str]:
        """The voices listed (blends are not: they are made on request)."""
        return sorted(self._sources)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def _find(self, name: str) -> VoiceSource | None:
        source = self._sources.get(name)
        if source is None:
            for family in self.families.values():
                source = family.resolve(name, self._sources)
                if source is not None:
                    break
        return source

    def info(self, name: str) -> VoiceInfo:
        return self.source(name).info

    def infos(self) -> list[VoiceInfo]:
        return [self._sources[name].info for name in self.names()]

    def source(self, name: str) -> VoiceSource:
        found = self._find(name)
        if found is None:
            raise UnknownVoice(name)
        return found

    def family(self, source: VoiceSource) -> VoiceFamily:
        return self.families[source.info.family]


class Engine:
    """Shared synthesis for all connections: one inference pool, voices loaded once.

    ``async with Engine(...) as engine:`` closes it on the way out (``aclose``), after the
    disk-cache writes in flight.
    """

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
        self._pool = InferencePool(
            cores, workers=workers, threads=intra_op_threads, release_memory=self._release_memory
        )
        self.intra_op_threads = self._pool.wide_threads
        self._extra_sessions: set[asyncio.Task[None]] = set()
        self._voices: dict[str, LoadedVoice] = {}
        self._loading: dict[str, asyncio.Future[LoadedVoice]] = {}
        self._loads: set[asyncio.Task[None]] = set()
        self.cache = PreparedLines(cache_bytes)
        self.preparing = LinesInPreparation()
        self.disk_cache = disk_cache
        self._disk_writes: set[asyncio.Task[None]] = set()

    async def voice(self, name: str | None = None) -> LoadedVoice:
        """The loaded voice, loading it on first use (raises UnknownVoice, SynthesisError)."""
        name = name or self.catalog.default_voice
        if name in self._voices:
            return self._voices[name]
        source = self.catalog.source(name)
        pending = self._loading.get(name)
        if pending is None:
            # Not on the inference pool: a 2-second load must not hold up other lines.
            load = asyncio.to_thread(self._load, source)
            pending = asyncio.create_task(load, name=f"load:{name}")
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

    async def load_voices(self, names: Iterable[str]) -> None:
        """Load ``names`` now, one after another: the voices a cast names, so that the first
        line of each character does not wait seconds for its voice (a Kokoro model). One
        that fails is logged; a line that needs it reports the failure, or falls back."""
        for name in sorted(set(names)):
            try:
                await self.voice(name)
            except (SynthesisError, UnknownVoice) as exc:
                _LOGGER.warning("Cannot load voice %r of the cast: %s", name, exc)

    def load_voices_soon(self, names: Iterable[str]) -> None:
        """``load_voices`` in the background (a client's cast, sent with its hello)."""
        missing = set(names) - self._voices.keys()
        if missing:
            task = asyncio.create_task(self.load_voices(missing), name="load-cast-voices")
            self._loads.add(task)
            task.add_done_callback(self._loads.discard)

    @property
    def preemptions(self) -> int:
        """Calls aborted for more urgent work and run again (see ``workers.py``)."""
        return self._pool.preemptions

    @property
    def parallel_lines(self) -> int:
        """Lines a batch command keeps in flight so that every core has work: one per call
        that may run at once, and one more, so that a job always waits when one ends."""
        return self._pool.slots + 1

    def _open_other_sessions(self, voice: LoadedVoice) -> None:
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

    def _load(self, source: VoiceSource) -> LoadedVoice:
        family = self.catalog.family(source)
        if self.disk_cache is None:
            return family.load(source, self.intra_op_threads)
        # Disk entries are keyed by the voice's contents; so is its calibration, kept in the
        # disk cache so that the next start skips measuring it.
        digest = source_digest(source)
        record = family.calibration_record(digest)
        stored = self.disk_cache.get_record(record) if record is not None else None
        voice = family.load(source, self.intra_op_threads, stored)
        voice.digest = digest
        if record is not None and voice.calibration is not None and voice.calibration != stored:
            self.disk_cache.put_record(record, voice.calibration)
        return voice

    def cache_counters(self) -> dict[str, Any]:
        counters: dict[str, Any] = {
            "memory": self.cache.counters(),
            "preparing": len(self.preparing),
            "joined": self.preparing.joined,  # said while being prepared: played from it
        }
        if self.disk_cache is not None:
            counters["disk"] = self.disk_cache.counters()
        return counters

    async def stream(
        self,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: PriorityKey = _current,
        on_fallback: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[Piece, None]:
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
            async with contextlib.aclosing(
                self._pieces(voice, request, cancel, priority)
            ) as pieces:
                async for piece in pieces:
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
            async with contextlib.aclosing(self.stream(fallback, cancel, priority)) as pieces:
                async for piece in pieces:
                    yield piece

    async def _pieces(
        self,
        voice: LoadedVoice,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: PriorityKey,
    ) -> AsyncGenerator[Piece, None]:
        """The line's pieces with gain applied, from a cache or synthesized."""
        gain = voice.gain * request.volume
        cached = await self._cached(voice, request)
        if cached is not None:
            for piece in cached:
                cancel.raise_if_cancelled()
                yield piece.with_audio(apply_gain(piece.audio, gain))
            return
        played = 0
        preparation = self.preparing.get(_memory_key(request), request.words and voice.timed)
        if preparation is not None:
            # Being prepared (lookahead came just too late): play its pieces as they come,
            # its remaining ones as urgent as ours, rather than synthesize the line twice.
            async with contextlib.aclosing(preparation.follow(priority)) as followed:
                async for piece in followed:
                    cancel.raise_if_cancelled()
                    played += 1
                    yield piece.with_audio(apply_gain(piece.audio, gain))
            if not preparation.failed:
                return
            # It was stopped (its client left): make the line here, from the next piece on
            # (pieces are made independently, so the seam is a piece boundary as always).
        made = []
        async with contextlib.aclosing(self._synthesize(voice, request, cancel, priority)) as new:
            async for piece in new:
                made.append(piece)
                if len(made) > played:
                    yield piece.with_audio(apply_gain(piece.audio, gain))
        self._store_on_disk(voice, request, made)  # only reached when the line was whole

    async def _cached(self, voice: LoadedVoice, request: SynthesisRequest) -> list[Piece] | None:
        pieces = self.cache.get(_memory_key(request))
        disk_key = self._disk_key(voice, request)
        if pieces is None and disk_key is not None:
            assert self.disk_cache is not None
            pieces = await asyncio.to_thread(self.disk_cache.get, disk_key)
        wants_words = request.words and voice.timed
        if pieces is not None and wants_words and not any(piece.words for piece in pieces):
            return None  # cached without words: say it again, with them
        return pieces

    def _disk_key(self, voice: LoadedVoice, request: SynthesisRequest) -> str | None:
        if self.disk_cache is None or voice.digest is None:
            return None
        settings = dataclasses.asdict(request.delivery)
        return line_key(voice.digest, settings, request.parts)

    def _store_on_disk(
        self, voice: LoadedVoice, request: SynthesisRequest, pieces: list[Piece]
    ) -> None:
        key = self._disk_key(voice, request)
        if key is None or len(self._disk_writes) >= _MAX_PENDING_WRITES:
            return
        assert self.disk_cache is not None
        task = asyncio.create_task(asyncio.to_thread(self.disk_cache.put, key, pieces))
        self._disk_writes.add(task)
        task.add_done_callback(self._disk_writes.discard)

    async def prepare(self, request: SynthesisRequest) -> float:
        """Synthesize a line into the cache (no playback); returns its duration in seconds.
        A ``stream`` of the same line meanwhile plays the pieces as they are made."""
        voice = await self.voice(request.voice)
        key, words = _memory_key(request), request.words and voice.timed
        pieces = await self._cached(voice, request)
        if pieces is None and (under_way := self.preparing.get(key, words)) is not None:
            async with contextlib.aclosing(under_way.follow(_background)) as following:
                followed = [piece async for piece in following]
            pieces = None if under_way.failed else followed
        if pieces is None:
            async with self.preparing.start(key, _background, words) as preparation:
                made = self._synthesize(voice, request, CancelToken(), preparation.priority)
                async with contextlib.aclosing(made):
                    async for piece in made:
                        preparation.add(piece)
            pieces = preparation.pieces
            self._store_on_disk(voice, request, pieces)
        self.cache.put(key, pieces)
        return sum(len(piece.audio) for piece in pieces) / voice.sample_rate

    async def render(self, request: SynthesisRequest) -> tuple[np.ndarray, int]:
        """A whole line as one array, with its sample rate (background priority)."""
        audio, sample_rate, _ = await self.render_timed(request)
        return audio, sample_rate

    async def render_timed(self, request: SynthesisRequest) -> tuple[np.ndarray, int, list[Piece]]:
        """``render``, and the pieces it was made of (with their timings)."""
        async with contextlib.aclosing(self.stream(request, CancelToken(), _background)) as made:
            pieces = [piece async for piece in made]
        sample_rate = request.sample_rate or self.catalog.info(request.voice).sample_rate
        audio = np.concatenate([p.audio for p in pieces]) if pieces else np.zeros(0, np.float32)
        return audio, sample_rate, pieces

    async def _synthesize(
        self,
        voice: LoadedVoice,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: PriorityKey,
    ) -> AsyncGenerator[Piece, None]:
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

    def _release_memory(self, lease: Lease) -> None:
        """Every loaded voice hands back the working memory its calls took (the pool calls
        this on its own thread once it has been idle a while)."""
        for voice in list(self._voices.values()):
            voice.release_memory(lease)

    def close(self) -> None:
        """Stop at once: queued calls are dropped (for synchronous callers; ``aclose`` also
        waits for what was cancelled and for the disk-cache writes)."""
        for task in (*self._extra_sessions, *self._loads):
            task.cancel()
        self._pool.close()

    async def aclose(self) -> None:
        """Close once the disk-cache writes in flight are done, waiting for every task the
        engine started to end (sessions still opening are cancelled)."""
        try:
            await self.finish_cache_writes()
        finally:
            extra = {*self._extra_sessions, *self._loads}
            self.close()
            if extra:
                await asyncio.wait(extra)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.aclose()


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


def _memory_key(request: SynthesisRequest) -> tuple[Any, ...]:
    # Volume and output sample rate are applied after the cache, so they are not part of it.
    return (request.voice, request.delivery, tuple(request.parts))


def source_digest(source: VoiceSource) -> str:
    """The content address of a voice: its files, and the settings its family adds."""
    digest = file_digest(*source.files)
    if not source.options:
        return digest
    material = repr((digest, source.options)).encode()
    return hashlib.sha256(material).hexdigest()
