"""The session of one connection: what each request does, and every reply it gets.

The I/O pump (``server.ConnectionHandler``) reads frames and hands each decoded request to
``Session.handle_message``; the session answers through its ``Outbox`` (the pump again),
which encodes, writes and bounds what waits for the client. So every reply is built here:
the speaker queues (``scheduler.py``) report what they did (a line's id and place, the lines
a skip or clear ended) and send only the events of lines (started, audio, marks, finished).
Every bound on what a connection's requests may ask for (text, scene, queue, speakers, files
in flight) is checked by ``jobs.Limits``; the pump bounds frames and unread output.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from . import __version__, errors
from .audio import encode_file
from .cast import Cast, CastError
from .engine import Engine, SynthesisError, SynthesisRequest, VoiceCatalog
from .errors import ProtocolError, RemoteProtocolError
from .jobs import Limits, RenderedFile, pronunciation, render_file, synthesis_request
from .messages import (
    PROTOCOL_VERSION,
    AudioFile,
    Bye,
    Cancel,
    Cancelled,
    CastReport,
    CastRequest,
    Clear,
    Cleared,
    Hello,
    Message,
    Pause,
    Paused,
    Ping,
    Pong,
    Prepare,
    Prepared,
    Pronounce,
    Queued,
    Resume,
    Resumed,
    Say,
    Skip,
    Skipped,
    StatusReport,
    StatusRequest,
    Synthesize,
    SynthesizeScene,
    VoiceList,
    VoicesRequest,
    Welcome,
)
from .protocol import MAX_EVENT_FRAME, Connection
from .scene import (
    SceneLineError,
    SceneRenderError,
    ScriptLine,
    render_scene,
    scene_jobs,
    scene_sample_rate,
)
from .scheduler import ConnectionQueues, Outbox, Spawn

__all__ = ["Session", "SessionConfig", "token_matches"]

_LOGGER = logging.getLogger(__name__)


class SessionConfig(Protocol):
    """What a session needs of the server's configuration (``server.ServerConfig``)."""

    @property
    def token(self) -> str | None: ...

    @property
    def cast(self) -> Cast: ...

    @property
    def pace(self) -> bool: ...

    @property
    def limits(self) -> Limits: ...

    @property
    def max_frame(self) -> int: ...


class Session:
    """One connection's requests and replies, its speaker queues and its file requests.

    Every task the session starts, its queues' included, is started with ``spawn``: the
    connection's ``asyncio.TaskGroup``, which waits for all of them when the connection ends.
    """

    def __init__(self, engine: Engine, outbox: Outbox, config: SessionConfig, spawn: Spawn) -> None:
        self.engine = engine
        self.outbox = outbox
        self.config = config
        self._spawn = spawn
        self.queues: ConnectionQueues | None = None
        """Made by hello (the protocol layer lets nothing but hello through first)."""
        self._file_tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[type[Message], Callable[..., Awaitable[bool]]] = {
            Hello: self._hello, Say: self._say, Skip: self._skip, Cancel: self._cancel,
            Clear: self._clear, Pause: self._pause, Resume: self._resume,
            VoicesRequest: self._voices, CastRequest: self._cast, StatusRequest: self._status,
            Synthesize: self._synthesize, SynthesizeScene: self._synthesize_scene,
            Prepare: self._prepare, Pronounce: self._pronounce, Ping: self._ping,
            Bye: self._bye,
        }  # fmt: skip

    async def handle_message(self, message: Message) -> bool:
        """Answer one request; False closes the connection."""
        try:
            return await self._handlers[type(message)](message)
        except RemoteProtocolError as exc:
            self.send_error(exc)
            return True

    def send_error(self, exc: ProtocolError) -> None:
        self.outbox.send(Connection.error_for(exc))

    def close(self) -> None:
        """Stop everything without sending (the peer is gone): cancel every task, which the
        connection's task group then waits for."""
        if self.queues is not None:
            self.queues.close()
        for task in self._file_tasks:
            task.cancel()

    @property
    def _queues(self) -> ConnectionQueues:
        assert self.queues is not None, "the protocol layer lets nothing but hello through first"
        return self.queues

    # --- the connection -----------------------------------------------------------------

    async def _hello(self, hello: Hello) -> bool:
        engine, config = self.engine, self.config
        if not token_matches(config.token, hello.token):
            _LOGGER.warning("Refused a client with a missing or wrong token")
            self.send_error(
                RemoteProtocolError(errors.UNAUTHORIZED, "missing or wrong token", hello.id)
            )
            return False
        cast = config.cast
        if hello.cast is not None:
            try:
                cast = _client_cast(hello.cast, engine.catalog)
            except CastError as exc:
                self.send_error(RemoteProtocolError(errors.INVALID_CAST, str(exc), hello.id))
                return False
            engine.load_voices_soon(cast.voices())
        self.queues = ConnectionQueues(
            engine, self.outbox, pace=hello.pace and config.pace, limits=config.limits,
            cast=cast, timings=frozenset(hello.timings or ()), spawn=self._spawn,
        )  # fmt: skip
        self.outbox.send(
            Welcome(
                id=hello.id,
                protocol=PROTOCOL_VERSION,
                server=f"dialogue-tts {__version__}",
                voices=[info.to_dict() for info in engine.catalog.infos()],
                default_voice=engine.catalog.default_voice,
                max_frame=config.max_frame,
                max_text=config.limits.max_text_chars,
            )
        )
        return True

    async def _ping(self, ping: Ping) -> bool:
        self.outbox.send(Pong(id=ping.id))
        return True

    async def _bye(self, bye: Bye) -> bool:
        self._queues.finish_all()
        return False

    # --- lines --------------------------------------------------------------------------

    async def _say(self, say: Say) -> bool:
        placed = self._queues.say(say)
        # The reply goes out before the line can start: the runner needs the loop to turn.
        self.outbox.send(
            Queued(id=say.id, line=placed.line, speaker=placed.speaker, position=placed.position)
        )
        return True

    async def _skip(self, skip: Skip) -> bool:
        line = self._queues.skip(skip.speaker)
        self.outbox.send(Skipped(id=skip.id, speaker=skip.speaker, line=line))
        return True

    async def _cancel(self, cancel: Cancel) -> bool:
        self._queues.cancel(cancel.line, cancel.id)
        self.outbox.send(Cancelled(id=cancel.id, line=cancel.line))
        return True

    async def _clear(self, clear: Clear) -> bool:
        lines = self._queues.clear(clear.speaker)
        self.outbox.send(Cleared(id=clear.id, speaker=clear.speaker, lines=lines))
        return True

    async def _pause(self, pause: Pause) -> bool:
        self._queues.pause(pause.speaker, pause.id)
        self.outbox.send(Paused(id=pause.id, speaker=pause.speaker))
        return True

    async def _resume(self, resume: Resume) -> bool:
        self._queues.resume(resume.speaker)
        self.outbox.send(Resumed(id=resume.id, speaker=resume.speaker))
        return True

    # --- questions ----------------------------------------------------------------------

    async def _voices(self, request: VoicesRequest) -> bool:
        infos = self.engine.catalog.infos()
        self.outbox.send(VoiceList(id=request.id, voices=[info.to_dict() for info in infos]))
        return True

    async def _cast(self, request: CastRequest) -> bool:
        self.outbox.send(CastReport(id=request.id, cast=self._queues.cast.to_dict()))
        return True

    async def _status(self, request: StatusRequest) -> bool:
        cache = self.engine.cache_counters()
        speakers, underruns = self._queues.status(), self._queues.underruns.to_dict()
        self.outbox.send(
            StatusReport(id=request.id, speakers=speakers, cache=cache, underruns=underruns)
        )
        return True

    async def _pronounce(self, request: Pronounce) -> bool:
        reply = pronunciation(request, self._queues.cast, self.engine.catalog, self.config.limits)
        self.outbox.send(reply)
        return True

    # --- files and preparing, in the background ----------------------------------------

    async def _synthesize(self, request: Synthesize) -> bool:
        self._background(request, self._render_file(request, self._background_request(request)))
        return True

    async def _prepare(self, request: Prepare) -> bool:
        synthesis = self._background_request(request)
        timings = self._queues.timings if request.timings is None else request.timings
        if "word" in timings:  # as a say asking for words will want them from the cache
            synthesis = dataclasses.replace(synthesis, words=True)
        self._background(request, self._prepare_line(request, synthesis))
        return True

    async def _synthesize_scene(self, request: SynthesizeScene) -> bool:
        limits, catalog = self.config.limits, self.engine.catalog
        limits.check_file_requests(len(self._file_tasks), request.id)
        lines = [ScriptLine.from_scene_line(line) for line in request.scene_lines()]
        limits.check_scene(sum(len(line.text) for line in lines), request.id)
        try:
            jobs = scene_jobs(lines, self._queues.cast, catalog, markup=request.markup,
                              limits=limits)  # fmt: skip
        except SceneLineError as exc:
            raise RemoteProtocolError(exc.code, f"lines[{exc.index}]: {exc}", request.id) from None
        self._background(request, self._render_scene(request, lines, jobs, scene_sample_rate(jobs)))
        return True

    def _background_request(self, request: Synthesize | Prepare) -> SynthesisRequest:
        """Check a synthesize or prepare request; raises RemoteProtocolError."""
        limits = self.config.limits
        limits.check_file_requests(len(self._file_tasks), request.id)
        job, _ = synthesis_request(request, self._queues.cast, self.engine.catalog, limits)
        return job

    def _background(
        self, request: Synthesize | SynthesizeScene | Prepare, work: Coroutine[Any, Any, None]
    ) -> None:
        answered = self._answered(request, work)
        try:
            task = self._spawn(answered, name=f"{request.TYPE}:{request.id}")
        except BaseException:
            # The connection is closing (its task group takes no new task): the request
            # goes with it, and its coroutines are closed rather than left never awaited.
            answered.close()
            work.close()
            raise
        self._file_tasks.add(task)
        task.add_done_callback(self._file_tasks.discard)
        # A task cancelled before its first step (the connection closed at once) never
        # awaited ``work``: closing it then is what awaiting would have done. Once the task
        # is done, ``work`` has finished or never started, so this is always safe.
        task.add_done_callback(lambda _task: work.close())

    async def _answered(
        self, request: Synthesize | SynthesizeScene | Prepare, work: Coroutine[Any, Any, None]
    ) -> None:
        """``work``, which answers ``request``; if it fails unexpectedly the request gets an
        internal_error (and the connection's task group, its other requests and its lines
        go on)."""
        try:
            await work
        except Exception as exc:
            _LOGGER.exception("%s request %r failed", request.TYPE, request.id)
            message = f"internal error: {type(exc).__name__}"
            self.send_error(RemoteProtocolError(errors.INTERNAL_ERROR, message, request.id))

    async def _prepare_line(self, request: Prepare, synthesis: SynthesisRequest) -> None:
        try:
            duration = await self.engine.prepare(synthesis)
        except SynthesisError as exc:
            self.send_error(RemoteProtocolError(errors.SYNTHESIS_FAILED, str(exc), request.id))
            return
        self.outbox.send(Prepared(id=request.id, duration=duration))

    async def _render_file(self, request: Synthesize, synthesis: SynthesisRequest) -> None:
        try:
            rendered = await render_file(self.engine, synthesis, request.format)
        except SynthesisError as exc:
            self.send_error(RemoteProtocolError(errors.SYNTHESIS_FAILED, str(exc), request.id))
            return
        self._send_file(request, rendered)

    async def _render_scene(
        self,
        request: SynthesizeScene,
        lines: list[ScriptLine],
        jobs: list[SynthesisRequest],
        sample_rate: int,
    ) -> None:
        try:
            scene = await render_scene(self.engine, lines, jobs, sample_rate, gap=request.gap)
        except SceneRenderError as exc:
            failed = [f"lines[{index}]: {why}" for index, why in exc.failures]
            more = f" (and {len(failed) - 3} more lines)" if len(failed) > 3 else ""
            message = "; ".join(failed[:3]) + more
            self.send_error(RemoteProtocolError(errors.SYNTHESIS_FAILED, message, request.id))
            return
        data = await asyncio.to_thread(encode_file, scene.audio, request.format, sample_rate)
        self._send_file(request, RenderedFile(data, scene.duration, sample_rate))

    def _send_file(self, request: Synthesize | SynthesizeScene, rendered: RenderedFile) -> None:
        if len(rendered.data) > MAX_EVENT_FRAME - 1024:
            self.send_error(
                RemoteProtocolError(
                    errors.RESULT_TOO_LARGE,
                    "the rendered file does not fit in one frame",
                    request.id,
                )
            )
            return
        self.outbox.send(
            AudioFile(
                id=request.id,
                format=request.format,
                data=rendered.data,
                duration=rendered.duration,
                sample_rate=rendered.sample_rate,
            )
        )


def token_matches(expected: str | None, given: str | None) -> bool:
    """True when no token is configured, or ``given`` is it (constant-time compare)."""
    if expected is None:
        return True
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def _client_cast(data: dict[str, Any] | str, catalog: VoiceCatalog) -> Cast:
    cast = Cast.from_toml(data, "hello") if isinstance(data, str) else Cast.from_dict(data, "hello")
    cast.check(catalog)
    return cast
