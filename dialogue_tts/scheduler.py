"""Per-speaker line queues for one connection.

Each speaker of a connection has a ``SpeakerQueue``: lines play strictly in order, one at a
time, while different speakers run concurrently. A line moves QUEUED -> STARTED -> FINISHED
(or QUEUED -> FINISHED when it is cancelled or fails before its first audio); the allowed
moves are the ``_TRANSITIONS`` table. ``SpeakerQueue.finish`` is the only way into FINISHED
(but for ``close``, when the peer is gone) and sends the one finished event a line ever gets;
audio goes out only through ``_send_audio``, which refuses a finished line. Those two places
carry the ordering guarantees of PROTOCOL.md.

The queues send the events of lines (started, marks, audio, finished) themselves; the replies
to requests are the session's (``session.py``): each request method here says what it did
(a line's id and place, the lines a skip or clear ended) and the session builds the reply.

A line becomes current ("started") as soon as it reaches the head of its speaker's queue,
while its first audio is still being synthesized, so that a skip right after a say ends the
line the player is looking at (and aborts its ONNX call). The pacing clock starts with the
first audio sent, which is when playback can begin.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Final, NamedTuple, Protocol

import numpy as np

from . import errors
from .audio import DEFAULT_CHUNK_SAMPLES, encode_stream_chunk, split_samples
from .cast import DEFAULT_CAST, Cast
from .engine import (
    CancelToken,
    SynthesisCancelled,
    SynthesisError,
    SynthesisRequest,
    UnknownVoice,
    VoiceInfo,
)
from .errors import RemoteProtocolError
from .jobs import DEFAULT_LIMITS, Catalog, Limits, synthesis_request
from .messages import Audio, Event, Finished, FinishStatus, LineId, Marks, Say, Started
from .timings import Piece, place, viseme_units
from .workers import Priority, PriorityKey

__all__ = [
    "ConnectionQueues",
    "Limits",
    "Line",
    "LineState",
    "Outbox",
    "Placed",
    "Spawn",
    "SpeakerQueue",
    "Synthesizer",
    "synthesis_request",
]

_LOGGER = logging.getLogger(__name__)


PREFETCH_LINES: Final = 1
"""Queued lines per speaker synthesized ahead while the current one plays."""
PREFETCH_SECONDS: Final = 15
"""Audio a queued line may synthesize ahead before it waits to become current."""
MAX_PREFETCHING: Final = 8
"""Queued lines of one connection being synthesized ahead at once (bounds memory)."""
URGENT_MARGIN: Final = 0.5
"""Seconds of audio left at the client below which a current line's next piece is urgent."""
UNDERRUN_TOLERANCE: Final = 0.02
"""A piece that reaches the client this late after the audio before it ran out is counted
as an underrun (a gap the player hears)."""


class Outbox(Protocol):
    """Where a connection's events go (the transport)."""

    def send(self, event: Event) -> None: ...

    async def drain(self) -> None:
        """Wait while the peer is behind on reading."""


class Spawn(Protocol):
    """Starts a task that its owner will wait for: ``asyncio.TaskGroup.create_task``, the
    connection's group (``asyncio.create_task`` where nothing owns the queues)."""

    def __call__(
        self, coroutine: Coroutine[Any, Any, None], *, name: str | None = None
    ) -> asyncio.Task[None]: ...


class Synthesizer(Protocol):
    """What the queues need of the engine (``engine.Engine``, or a fake in unit tests)."""

    catalog: Catalog

    def stream(
        self,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: PriorityKey,
        on_fallback: Callable[[str], None] | None = None,
    ) -> AsyncGenerator[Piece, None]: ...


class Placed(NamedTuple):
    """Where ``ConnectionQueues.say`` put a line."""

    line: LineId
    speaker: str
    position: int
    """Lines before it in its speaker's queue, counting the current one (0: it plays next)."""


class LineState(enum.Enum):
    QUEUED = "queued"
    STARTED = "started"
    FINISHED = "finished"


_TRANSITIONS: Final[dict[LineState, frozenset[LineState]]] = {
    LineState.QUEUED: frozenset({LineState.STARTED, LineState.FINISHED}),
    LineState.STARTED: frozenset({LineState.FINISHED}),
    LineState.FINISHED: frozenset(),
}


class _Clock:
    """Seconds a line has been playing, with paused time left out."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._paused_total = 0.0
        self._paused_at: float | None = None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_total += time.monotonic() - self._paused_at
            self._paused_at = None

    def elapsed(self) -> float:
        now = self._paused_at if self._paused_at is not None else time.monotonic()
        return now - self.started - self._paused_total


class Line:
    """One queued line and everything the queue knows of it."""

    def __init__(
        self, line_id: LineId, say: Say, request: SynthesisRequest, voice: VoiceInfo
    ) -> None:
        self.id = line_id
        self.say = say
        self.request = request
        self.voice = voice
        self.state = LineState.QUEUED
        self.cancel_token = CancelToken()
        self.samples_sent = 0
        self.all_sent = False
        """The whole line's audio has been synthesized and sent."""
        self.samples_ready = 0
        """Synthesized so far (sent or waiting in ``audio``)."""
        self.next_seq = 0
        self.clock: _Clock | None = None
        self.audio: _LineAudio | None = None
        self.queued_at = time.monotonic()
        self.sample_rate = request.sample_rate or voice.sample_rate
        """Of the audio sent: the client's requested rate, else the voice's."""
        self.timings = frozenset(say.timings or ())
        """The marks the client asked for with this line."""
        self.notes: list[str] = []
        """What the finished event should tell, e.g. that the line fell back to another voice."""
        self.gaps = Underruns()
        """This line's own underruns: said in its finished event, never silently."""

    def priority(self) -> tuple[Priority, float]:
        """How urgent this line's next ONNX call is (read from inference threads)."""
        if self.state is LineState.QUEUED:
            return Priority.PREFETCH, self.queued_at
        clock = self.clock
        if clock is None:
            return Priority.FIRST, self.queued_at  # the player is waiting for its first audio
        runs_dry = clock.started + self.samples_ready / self.sample_rate
        if runs_dry - time.monotonic() < URGENT_MARGIN:
            return Priority.URGENT, runs_dry
        return Priority.CURRENT, runs_dry

    @property
    def speaker(self) -> str:
        return self.say.speaker

    @property
    def finished(self) -> bool:
        return self.state is LineState.FINISHED

    def move_to(self, state: LineState) -> None:
        if state not in _TRANSITIONS[self.state]:
            raise errors.LocalProtocolError(
                errors.INTERNAL_ERROR, f"line {self.id!r}: {self.state.value} -> {state.value}"
            )
        self.state = state


class _LineAudio:
    """Synthesizes one line's pieces ahead of playback into a buffer.

    For a queued line (prefetch) the buffer is bounded: synthesis waits once it holds
    ``PREFETCH_SECONDS``, and goes on when the line becomes current or is played from.
    """

    def __init__(self, line: Line, engine: Synthesizer, spawn: Spawn) -> None:
        self._line = line
        self.pieces: deque[Piece] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._changed = asyncio.Event()
        self._room = asyncio.Event()
        self._task = spawn(self._fill(engine), name=f"synth:{line.id}")

    async def _fill(self, engine: Synthesizer) -> None:
        line = self._line
        limit = PREFETCH_SECONDS * line.sample_rate
        try:
            stream = engine.stream(
                line.request, line.cancel_token, line.priority, on_fallback=line.notes.append
            )
            # Closed as this loop ends, however it ends, not whenever the garbage collector
            # finds the generator: its synthesis and cache work stop with the line.
            async with contextlib.aclosing(stream):
                async for piece in stream:
                    self.pieces.append(piece)
                    self._buffered += len(piece.audio)
                    line.samples_ready += len(piece.audio)
                    self._changed.set()
                    while self._buffered > limit and not line.finished:
                        self._room.clear()
                        await self._room.wait()
        except Exception as exc:  # handed to the player in next_piece
            self._error = exc
        finally:
            self._done = True
            self._changed.set()

    async def next_piece(self) -> Piece | None:
        """The next piece in order, None at the end; raises what synthesis raised."""
        while not self.pieces:
            if self._done:
                if self._error is not None:
                    raise self._error
                return None
            self._changed.clear()
            await self._changed.wait()
        piece = self.pieces.popleft()
        self._buffered -= len(piece.audio)
        self._room.set()
        return piece

    def cancel(self) -> None:
        self._task.cancel()


class SpeakerQueue:
    """One speaker's lines: the current line, the queued ones, and the task that plays them."""

    def __init__(self, name: str, owner: ConnectionQueues, paused: bool = False) -> None:
        self.name = name
        self._owner = owner
        self.current: Line | None = None
        self.queued: deque[Line] = deque()
        self.paused = paused
        self.explicitly_paused = False
        """Paused by name, not by a pause of all speakers: such a speaker is never forgotten."""
        self._changed = asyncio.Event()
        self._unpaused = asyncio.Event()
        if not paused:
            self._unpaused.set()
        self._active: Line | None = None
        self._playing: asyncio.Task[None] | None = None
        self._runner = owner.spawn(self._run(), name=f"speaker:{name}")

    # --- requests -------------------------------------------------------------------

    @property
    def size(self) -> int:
        return len(self.queued) + (self.current is not None)

    @property
    def idle(self) -> bool:
        return self.size == 0 and not self.explicitly_paused

    def add(self, line: Line) -> int:
        position = self.size
        self.queued.append(line)
        self._changed.set()
        self._prefetch()
        return position

    def skip(self) -> LineId | None:
        line = self.current
        if line is None and self.queued and not self.paused:
            # Said and skipped in one read: the head line starts as soon as the runner turns,
            # so it is the line the client is skipping (a game that starts a line from audio
            # it holds, then skips it, must not hear it start again).
            line = self.queued[0]
        if line is None:
            return None
        self.finish(line, "skipped")
        return line.id

    def cancel_all(self) -> list[LineId]:
        lines = ([self.current] if self.current else []) + list(self.queued)
        for line in lines:
            self.finish(line, "cancelled")
        return [line.id for line in lines]

    def pause(self, *, explicit: bool = True) -> None:
        self.paused = True
        self.explicitly_paused = self.explicitly_paused or explicit
        self._unpaused.clear()
        if self.current and self.current.clock:
            self.current.clock.pause()

    def resume(self) -> None:
        self.paused = self.explicitly_paused = False
        if self.current and self.current.clock:
            self.current.clock.resume()
        self._unpaused.set()
        self._changed.set()

    def status(self) -> dict[str, Any]:
        return {
            "current": self.current.id if self.current else None,
            "queued": [line.id for line in self.queued],
            "paused": self.paused,
        }

    def finish(self, line: Line, status: FinishStatus, message: str | None = None) -> None:
        """End ``line`` with its one finished event; does nothing if it already ended."""
        if line.finished:
            return
        line.move_to(LineState.FINISHED)
        line.cancel_token.cancel()
        if line.audio is not None:
            line.audio.cancel()
        if line is self.current:
            self.current = None
        else:
            self.queued.remove(line)
        self._owner.line_finished(line)
        self._owner.outbox.send(
            Finished(
                line=line.id,
                speaker=self.name,
                status=status,
                samples=line.samples_sent,
                complete=line.all_sent,
                message=message,
            )
        )
        playing = self._playing
        if line is self._active and playing is not None and playing is not asyncio.current_task():
            playing.cancel()
        self._changed.set()

    def close(self) -> None:
        """Stop at once without sending anything (the connection is gone)."""
        for line in ([self.current] if self.current else []) + list(self.queued):
            line.cancel_token.cancel()
            if line.audio is not None:
                line.audio.cancel()
            line.state = LineState.FINISHED
            self._owner.line_finished(line)
        self.current = None
        self.queued.clear()
        self._runner.cancel()
        if self._playing is not None:
            self._playing.cancel()

    # --- playing ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            line = await self._next_line()
            self._start(line)
            if line.audio is None:
                line.audio = _LineAudio(line, self._owner.engine, self._owner.spawn)
            self._prefetch()
            self._active = line
            self._playing = self._owner.spawn(self._play(line), name=f"line:{line.id}")
            try:
                await asyncio.wait([self._playing])
            finally:
                if not self._playing.done():
                    self._playing.cancel()
            self._active = self._playing = None
            if not line.finished:  # a safety net: _play always finishes its line
                self.finish(line, "error", "internal error")

    async def _next_line(self) -> Line:
        while not self.queued or self.paused:
            self._changed.clear()
            await self._changed.wait()
        return self.queued[0]

    async def _play(self, line: Line) -> None:
        assert line.audio is not None, "the runner starts a line's synthesis with the line"
        try:
            while (piece := await line.audio.next_piece()) is not None:
                self._count_gap(line)
                self._send_marks(line, piece)
                for chunk in split_samples(piece.audio, self._owner.chunk_samples):
                    await self._unpaused.wait()
                    self._send_audio(line, chunk)
                    await self._owner.outbox.drain()
            line.all_sent = True
            if self._owner.pace:
                await self._wait_played(line)
            if line.gaps.count:
                line.notes.append(_gap_warning(line.gaps))
            self.finish(line, "done", "; ".join(line.notes) or None)
        except SynthesisCancelled:
            pass  # whoever cancelled it has finished it
        except (SynthesisError, UnknownVoice) as exc:
            self.finish(line, "error", str(exc))
        except Exception as exc:  # keep serving the other lines whatever one does
            _LOGGER.exception("Line %r failed", line.id)
            self.finish(line, "error", f"internal error: {type(exc).__name__}")
        finally:
            line.cancel_token.cancel()
            line.audio.cancel()

    def _prefetch(self) -> None:
        """Start synthesizing the next queued lines while the current one plays."""
        if self.current is None:
            return  # the runner starts the head line itself, at once
        for line in itertools.islice(self.queued, PREFETCH_LINES):
            if line.audio is None and self._owner.prefetching() < MAX_PREFETCHING:
                line.audio = _LineAudio(line, self._owner.engine, self._owner.spawn)

    def _start(self, line: Line) -> None:
        line.move_to(LineState.STARTED)
        self.queued.remove(line)
        self.current = line
        self._owner.outbox.send(
            Started(
                line=line.id,
                speaker=self.name,
                voice=line.voice.name,
                sample_rate=line.sample_rate,
                channels=1,
                format=line.say.format,
            )
        )

    def _count_gap(self, line: Line) -> None:
        """Count an underrun if the client's audio of this line ran out before this piece,
        and move the line's clock on by the gap: the client's playback stalled that long."""
        clock = line.clock
        if clock is None:
            return  # nothing played yet: the player waits for first audio, not a gap
        gap = clock.elapsed() - line.samples_sent / line.sample_rate
        if gap > UNDERRUN_TOLERANCE:
            self._owner.underruns.add(gap)
            line.gaps.add(gap)
            clock.started += gap

    def _send_marks(self, line: Line, piece: Piece) -> None:
        """The piece's timings the client asked for, placed in the line, before its audio."""
        if line.finished or not line.timings or not (piece.phonemes or piece.words):
            return
        offset = line.samples_sent
        marks = Marks(line=line.id, speaker=self.name)
        if "word" in line.timings:
            words = place(piece.words, offset)
            marks = replace(marks, words=[[w.start, w.n_samples, w.start_char, w.end_char]
                                          for w in words])  # fmt: skip
        if "phoneme" in line.timings:
            phonemes = place(piece.phonemes, offset)
            marks = replace(marks, phonemes=[[p.start, p.n_samples, p.phoneme] for p in phonemes])
        if "viseme" in line.timings:
            visemes = place(viseme_units(piece.phonemes), offset)
            marks = replace(marks, visemes=[[v.start, v.n_samples, v.viseme] for v in visemes])
        self._owner.outbox.send(marks)

    def _send_audio(self, line: Line, samples: np.ndarray) -> None:
        if line.finished:
            return
        if line.clock is None:
            line.clock = _Clock()
        data = encode_stream_chunk(samples, line.say.format, line.sample_rate)
        self._owner.outbox.send(
            Audio(line=line.id, speaker=self.name, seq=line.next_seq, data=data)
        )
        line.next_seq += 1
        line.samples_sent += len(samples)

    async def _wait_played(self, line: Line) -> None:
        """Wait until the line's audio would have finished playing (paused time excluded)."""
        if line.clock is None:
            return  # nothing was sent
        duration = line.samples_sent / line.sample_rate
        while True:
            await self._unpaused.wait()
            remaining = duration - line.clock.elapsed()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining)


@dataclass
class Underruns:
    """Gaps in a connection's playback: pieces that came after the audio before them had
    played out (synthesis fell behind)."""

    count: int = 0
    seconds: float = 0.0

    def add(self, gap: float) -> None:
        self.count += 1
        self.seconds += gap

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "seconds": round(self.seconds, 3)}


def _gap_warning(gaps: Underruns) -> str:
    return (
        f"warning: synthesis fell behind playback {gaps.count} time(s), {gaps.seconds:.2f} s "
        "of gaps; prepare slow voices' lines ahead (prepare) or pre-render them"
    )


class ConnectionQueues:
    """All speaker queues of one connection, and the line ids they use."""

    def __init__(
        self,
        engine: Synthesizer,
        outbox: Outbox,
        *,
        pace: bool = True,
        limits: Limits = DEFAULT_LIMITS,
        chunk_samples: int = DEFAULT_CHUNK_SAMPLES,
        cast: Cast = DEFAULT_CAST,
        timings: frozenset[str] = frozenset(),
        spawn: Spawn = asyncio.create_task,
    ) -> None:
        """``spawn`` starts the queues' tasks (speakers, lines, synthesis ahead): give it the
        connection's task group, which then waits for every one of them to end."""
        self.engine = engine
        self.spawn = spawn
        self.cast = cast
        self.timings = timings
        """Marks for every say that does not choose its own (from the hello)."""
        self.outbox = outbox
        self.pace = pace
        self.limits = limits
        self.chunk_samples = chunk_samples
        self.speakers: dict[str, SpeakerQueue] = {}
        self._lines: dict[LineId, Line] = {}
        self._line_ids: Callable[[], int] = itertools.count(1).__next__
        self._all_paused = False
        self.underruns = Underruns()

    def say(self, say: Say) -> Placed:
        """Queue a line (interrupting first if asked); raises RemoteProtocolError."""
        if say.timings is None and self.timings:
            say = replace(say, timings=sorted(self.timings))  # the hello's default
        request, voice = synthesis_request(say, self.cast, self.engine.catalog, self.limits)
        if say.timings and "word" in say.timings:
            request = replace(request, words=True)
        if say.line is not None and say.line in self._lines:
            raise RemoteProtocolError(
                errors.LINE_IN_USE, f"line {say.line!r} is still queued or playing", say.id
            )
        speaker = self._speaker(say.speaker, say.id)
        if say.interrupt:
            speaker.skip()
            speaker.cancel_all()
        else:
            self.limits.check_queue(say.speaker, speaker.size, say.id)
        line = Line(self._new_line_id() if say.line is None else say.line, say, request, voice)
        self._lines[line.id] = line
        return Placed(line.id, say.speaker, speaker.add(line))

    def skip(self, speaker_name: str) -> LineId | None:
        """End the speaker's current line; returns its id (None if it had none)."""
        speaker = self.speakers.get(speaker_name)
        return speaker.skip() if speaker else None

    def cancel(self, line_id: LineId, request_id: int | str | None = None) -> None:
        """End a queued or playing line; raises RemoteProtocolError if there is none."""
        line = self._lines.get(line_id)
        if line is None:
            raise RemoteProtocolError(
                errors.UNKNOWN_LINE, f"no queued or playing line {line_id!r}", request_id
            )
        self.speakers[line.speaker].finish(line, "cancelled")

    def clear(self, speaker_name: str | None) -> list[LineId]:
        """Cancel every line of a speaker (of all speakers: None); returns their ids."""
        cleared: list[LineId] = []
        for speaker in self._selected(speaker_name):
            cleared += speaker.cancel_all()
        return cleared

    def pause(self, speaker_name: str | None, request_id: int | str | None = None) -> None:
        if speaker_name is None:
            self._all_paused = True
            for speaker in self.speakers.values():
                speaker.pause(explicit=False)
        else:
            self._speaker(speaker_name, request_id).pause()

    def resume(self, speaker_name: str | None) -> None:
        if speaker_name is None:
            self._all_paused = False
        for speaker in self._selected(speaker_name):
            speaker.resume()

    def status(self) -> dict[str, Any]:
        return {name: speaker.status() for name, speaker in self.speakers.items()}

    def finish_all(self) -> None:
        """Cancel every line, sending their finished events (for "bye")."""
        for speaker in self.speakers.values():
            speaker.cancel_all()

    def close(self) -> None:
        """Stop everything without sending (the peer is gone)."""
        for speaker in self.speakers.values():
            speaker.close()
        self.speakers.clear()

    def prefetching(self) -> int:
        return sum(
            1
            for speaker in self.speakers.values()
            for line in speaker.queued
            if line.audio is not None
        )

    def line_finished(self, line: Line) -> None:
        self._lines.pop(line.id, None)

    def _selected(self, speaker_name: str | None) -> list[SpeakerQueue]:
        if speaker_name is None:
            return list(self.speakers.values())
        speaker = self.speakers.get(speaker_name)
        return [speaker] if speaker else []

    def _speaker(self, name: str, request_id: int | str | None) -> SpeakerQueue:
        speaker = self.speakers.get(name)
        if speaker is not None:
            return speaker
        idle = next((s for s in self.speakers.values() if s.idle), None)
        if self.limits.check_speakers(len(self.speakers), idle is not None, request_id):
            assert idle is not None
            idle.close()
            del self.speakers[idle.name]
        speaker = SpeakerQueue(name, self, paused=self._all_paused)
        self.speakers[name] = speaker
        return speaker

    def _new_line_id(self) -> int:
        while True:
            line_id = self._line_ids()
            if line_id not in self._lines:
                return line_id
