"""The asyncio transport: TCP on loopback and a Unix socket, one handler per connection.

The handler moves bytes between the socket and a sans-I/O ``protocol.Connection``, answers
requests, and is the ``Outbox`` of its connection's speaker queues. WebSocket connections
(``websocket.py``) are served by the same handler through a reader and a writer adapter:
``Server.start`` hands ``serve_connection`` to the web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from . import __version__, errors
from .audio import encode_file
from .cast import DEFAULT_CAST, Cast, CastError
from .engine import Engine, SynthesisError, SynthesisRequest, VoiceCatalog
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .jobs import (
    DEFAULT_LIMITS,
    Limits,
    RenderedFile,
    pronunciation,
    render_file,
    synthesis_request,
)
from .messages import (
    PROTOCOL_VERSION,
    AudioFile,
    Bye,
    Cancel,
    CastReport,
    CastRequest,
    Clear,
    Event,
    Hello,
    Message,
    Pause,
    Paused,
    Ping,
    Pong,
    Prepare,
    Prepared,
    Pronounce,
    Resume,
    Resumed,
    Say,
    Skip,
    StatusReport,
    StatusRequest,
    Synthesize,
    SynthesizeScene,
    VoiceList,
    VoicesRequest,
    Welcome,
)
from .net import FrameReader, FrameWriter, Listener, is_loopback
from .protocol import (
    CLOSED,
    DEFAULT_HOST,
    DEFAULT_MAX_FRAME,
    DEFAULT_PORT,
    MAX_EVENT_FRAME,
    NEED_DATA,
    Connection,
    Role,
)
from .scene import SceneLineError, SceneRenderError, ScriptLine, render_scene, scene_jobs
from .scheduler import ConnectionQueues

if TYPE_CHECKING:
    from .websocket import WebServer

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "ConnectionHandler", "Server", "ServerConfig"]

_LOGGER = logging.getLogger(__name__)

_READ_SIZE: Final = 64 * 1024


@dataclass(frozen=True)
class ServerConfig:
    host: str | None = DEFAULT_HOST
    """None: no TCP listener (Unix socket only)."""
    port: int = DEFAULT_PORT
    unix_path: Path | None = None
    allow_remote: bool = False
    """Binding to a non-loopback address needs this; the server warns loudly then."""
    pace: bool = True
    max_connections: int = 64
    max_frame: int = DEFAULT_MAX_FRAME
    hello_timeout: float = 10.0
    """Seconds a new connection has to send hello before it is closed."""
    max_write_buffer: int = 8 * 1024 * 1024
    """Bytes queued for a client that does not read; past this the client is dropped."""
    stall_timeout: float = 120.0
    """Seconds a client may leave replies unread (while more wait) before it is dropped."""
    max_file_requests: int = 4
    """synthesize requests in flight per connection."""
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)
    web_port: int | None = None
    """Also serve WebSocket and the preview page on this port (needs the ``web`` extra)."""
    web_origins: tuple[str, ...] = ()
    """Page origins allowed to open a WebSocket besides the preview page's own."""
    cast: Cast = DEFAULT_CAST
    """Speakers' voices and styles, unless a client sends its own cast in hello."""
    token: str | None = field(default=None, repr=False)
    """Shared secret every hello must carry (compared in constant time); None: no token."""


class Server:
    """Serves one engine to many connections."""

    def __init__(self, engine: Engine, config: ServerConfig | None = None) -> None:
        self.engine = engine
        self.config = config or ServerConfig()
        self.handlers: set[ConnectionHandler] = set()
        self._connection_tasks: set[asyncio.Task[None]] = set()
        self._servers: list[Listener] = []
        self.port: int | None = None
        """The TCP port actually bound (useful with port 0)."""
        self.web: WebServer | None = None
        """The WebSocket and preview page server, when ``web_port`` is set."""

    async def start(self) -> None:
        """Load and warm up the default voice, then listen."""
        await self.engine.voice()
        config = self.config
        if config.host is not None:
            if not is_loopback(config.host) and not config.allow_remote:
                raise ValueError(
                    f"refusing to listen on {config.host}: not a loopback address "
                    "(pass allow_remote / --allow-remote to do it anyway)"
                )
            if not is_loopback(config.host):
                _LOGGER.warning(
                    "LISTENING ON %s: any machine that can reach it can use this server",
                    config.host,
                )
            tcp = await asyncio.start_server(self.serve_connection, config.host, config.port)
            self.port = tcp.sockets[0].getsockname()[1]
            self._servers.append(tcp)
        if config.unix_path is not None:
            self._servers.append(await _start_unix_server(self.serve_connection, config.unix_path))
        if config.web_port is not None:
            # Imported here: the websockets package is optional (the ``web`` extra).
            from .websocket import WebServer

            self.web = await WebServer.start(
                self.serve_connection, config.web_port, host=config.host or DEFAULT_HOST,
                origins=config.web_origins, allow_remote=config.allow_remote,
                max_frame=config.max_frame,
            )  # fmt: skip
            self._servers.append(self.web)

    @property
    def addresses(self) -> list[str]:
        found = [f"{self.config.host}:{self.port}"] if self.port is not None else []
        if self.config.unix_path is not None:
            found.append(f"unix:{self.config.unix_path}")
        return found

    async def serve_forever(self) -> None:
        await asyncio.gather(*(server.serve_forever() for server in self._servers))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for handler in list(self.handlers):
            handler.abort()
        if self._connection_tasks:
            await asyncio.wait(self._connection_tasks, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        if self.config.unix_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_path.unlink()

    async def serve_connection(self, reader: FrameReader, writer: FrameWriter) -> None:
        """Serve one connection, from any transport, until it closes."""
        task = asyncio.current_task()
        assert task is not None
        self._connection_tasks.add(task)
        task.add_done_callback(self._connection_tasks.discard)
        handler = ConnectionHandler(self, reader, writer)
        if len(self.handlers) >= self.config.max_connections:
            handler.send_error(
                RemoteProtocolError(errors.SERVER_BUSY, "too many connections; try again later")
            )
            await handler.close()
            return
        self.handlers.add(handler)
        try:
            await handler.run()
        finally:
            self.handlers.discard(handler)


class ConnectionHandler:
    """One client connection: reads requests, writes replies and line events."""

    def __init__(self, server: Server, reader: FrameReader, writer: FrameWriter) -> None:
        self.server = server
        self.config = server.config
        self._reader = reader
        self._writer = writer
        self._connection = Connection(Role.SERVER, self.config.max_frame)
        self._large_unread = 0
        """Bytes of large frames (files) written since the client last caught up."""
        self.queues: ConnectionQueues | None = None
        self._file_tasks: set[asyncio.Task[None]] = set()
        self._handlers: dict[type[Message], Callable[..., Awaitable[bool]]] = {
            Hello: self._hello, Say: self._say, Skip: self._skip, Cancel: self._cancel,
            Clear: self._clear, Pause: self._pause, Resume: self._resume,
            VoicesRequest: self._voices, CastRequest: self._cast, StatusRequest: self._status,
            Synthesize: self._synthesize, SynthesizeScene: self._synthesize_scene,
            Prepare: self._prepare, Pronounce: self._pronounce, Ping: self._ping,
            Bye: self._bye,
        }  # fmt: skip

    # --- Outbox -------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        if self._writer.is_closing():
            return
        try:
            frame = self._connection.send(event)
        except LocalProtocolError as exc:  # e.g. an audio_file too large for one frame
            self.send_error(exc)
            return
        self._writer.write(frame)
        if len(frame) > _READ_SIZE:
            # A whole file (audio_file) may be larger than the limit by itself; it does not
            # count against it until the client has had the time to read it (next drain).
            self._large_unread += len(frame)
        limit = self.config.max_write_buffer + self._large_unread
        if self._writer.transport.get_write_buffer_size() > limit:
            _LOGGER.warning("Dropping a client that has stopped reading")
            self.abort()

    async def drain(self) -> None:
        """Wait while the client is behind on reading; drop it if it reads nothing for
        ``stall_timeout`` seconds (a client that stops reading must not hold its slot and
        its lines forever)."""
        try:
            async with asyncio.timeout(self.config.stall_timeout):
                await self._writer.drain()
            self._large_unread = 0
        except ConnectionError:
            pass
        except TimeoutError:
            _LOGGER.warning(
                "Dropping a client that read nothing for %g s", self.config.stall_timeout
            )
            self.abort()

    def send_error(self, exc: ProtocolError) -> None:
        self.send(Connection.error_for(exc))

    # --- lifetime -----------------------------------------------------------------------

    async def run(self) -> None:
        try:
            await self._read_loop()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except TimeoutError:
            self.send_error(RemoteProtocolError(errors.TIMEOUT, "no hello in time"))
        finally:
            if self.queues is not None:
                self.queues.close()
            for task in self._file_tasks:
                task.cancel()
            await self.close()

    async def _read_loop(self) -> None:
        loop = asyncio.get_running_loop()
        hello_deadline = loop.time() + self.config.hello_timeout
        while True:
            if self._connection.hello is None:
                async with asyncio.timeout_at(hello_deadline):
                    data = await self._reader.read(_READ_SIZE)
            else:
                data = await self._reader.read(_READ_SIZE)
            self._connection.receive_data(data)
            while True:
                try:
                    message = self._connection.next_message()
                except RemoteProtocolError as exc:
                    self.send_error(exc)
                    if exc.fatal:
                        return
                    continue
                if message is NEED_DATA:
                    break
                if message is CLOSED:
                    return
                if not await self.handle_message(message):
                    return
            # Back-pressure: read no more requests while replies wait for this client.
            await self.drain()

    async def handle_message(self, message: Message) -> bool:
        """Answer one request; False closes the connection."""
        try:
            return await self._handlers[type(message)](message)
        except RemoteProtocolError as exc:
            self.send_error(exc)
            return True

    def abort(self) -> None:
        self._writer.transport.abort()

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()

    # --- requests -----------------------------------------------------------------------

    async def _hello(self, hello: Hello) -> bool:
        engine = self.server.engine
        if not token_matches(self.config.token, hello.token):
            _LOGGER.warning("Refused a client with a missing or wrong token")
            self.send_error(
                RemoteProtocolError(errors.UNAUTHORIZED, "missing or wrong token", hello.id)
            )
            return False
        cast = self.config.cast
        if hello.cast is not None:
            try:
                cast = _client_cast(hello.cast, engine.catalog)
            except CastError as exc:
                self.send_error(RemoteProtocolError(errors.INVALID_CAST, str(exc), hello.id))
                return False
        self.queues = ConnectionQueues(
            engine, self, pace=hello.pace and self.config.pace, limits=self.config.limits,
            cast=cast, timings=frozenset(hello.timings or ()),
        )  # fmt: skip
        self.send(
            Welcome(
                id=hello.id,
                protocol=PROTOCOL_VERSION,
                server=f"dialogue-tts {__version__}",
                voices=[info.to_dict() for info in engine.catalog.infos()],
                default_voice=engine.catalog.default_voice,
                max_frame=self.config.max_frame,
                max_text=self.config.limits.max_text_chars,
            )
        )
        return True

    @property
    def _queues(self) -> ConnectionQueues:
        assert self.queues is not None, "the protocol layer lets nothing but hello through first"
        return self.queues

    async def _say(self, say: Say) -> bool:
        self.send(self._queues.say(say))
        return True

    async def _skip(self, skip: Skip) -> bool:
        self.send(self._queues.skip(skip.speaker, skip.id))
        return True

    async def _cancel(self, cancel: Cancel) -> bool:
        self.send(self._queues.cancel(cancel.line, cancel.id))
        return True

    async def _clear(self, clear: Clear) -> bool:
        self.send(self._queues.clear(clear.speaker, clear.id))
        return True

    async def _pause(self, pause: Pause) -> bool:
        self._queues.pause(pause.speaker, pause.id)
        self.send(Paused(id=pause.id, speaker=pause.speaker))
        return True

    async def _resume(self, resume: Resume) -> bool:
        self._queues.resume(resume.speaker)
        self.send(Resumed(id=resume.id, speaker=resume.speaker))
        return True

    async def _voices(self, request: VoicesRequest) -> bool:
        infos = self.server.engine.catalog.infos()
        self.send(VoiceList(id=request.id, voices=[info.to_dict() for info in infos]))
        return True

    async def _cast(self, request: CastRequest) -> bool:
        self.send(CastReport(id=request.id, cast=self._queues.cast.to_dict()))
        return True

    async def _status(self, request: StatusRequest) -> bool:
        cache = self.server.engine.cache_counters()
        speakers, underruns = self._queues.status(), self._queues.underruns.to_dict()
        self.send(StatusReport(id=request.id, speakers=speakers, cache=cache, underruns=underruns))
        return True

    async def _synthesize(self, request: Synthesize) -> bool:
        self._background(self._render_file(request, self._background_request(request)))
        return True

    async def _prepare(self, request: Prepare) -> bool:
        synthesis = self._background_request(request)
        timings = self._queues.timings if request.timings is None else request.timings
        if "word" in timings:  # as a say asking for words will want them from the cache
            synthesis = dataclasses.replace(synthesis, words=True)
        self._background(self._prepare_line(request, synthesis))
        return True

    async def _synthesize_scene(self, request: SynthesizeScene) -> bool:
        self._check_file_slot(request)
        lines = [ScriptLine.from_scene_line(line) for line in request.scene_lines()]
        limits, catalog = self.config.limits, self.server.engine.catalog
        total = sum(len(line.text) for line in lines)
        if total > limits.max_scene_chars:
            raise RemoteProtocolError(
                errors.TEXT_TOO_LONG,
                f"the scene has {total} characters of text; the limit is {limits.max_scene_chars}",
                request.id,
            )
        sample_rate = catalog.info(catalog.default_voice).sample_rate  # as the CLI's preview
        try:
            jobs = scene_jobs(lines, self._queues.cast, catalog, markup=request.markup,
                              sample_rate=sample_rate, limits=limits)  # fmt: skip
        except SceneLineError as exc:
            raise RemoteProtocolError(exc.code, f"lines[{exc.index}]: {exc}", request.id) from None
        self._background(self._render_scene(request, lines, jobs, sample_rate))
        return True

    def _check_file_slot(self, request: Synthesize | SynthesizeScene | Prepare) -> None:
        if len(self._file_tasks) >= self.config.max_file_requests:
            raise RemoteProtocolError(
                errors.QUEUE_FULL,
                f"{self.config.max_file_requests} synthesize/prepare requests are already running",
                request.id,
            )

    async def _pronounce(self, request: Pronounce) -> bool:
        reply = pronunciation(
            request, self._queues.cast, self.server.engine.catalog, self.config.limits
        )
        self.send(reply)
        return True

    def _background_request(self, request: Synthesize | Prepare) -> SynthesisRequest:
        """Check a synthesize or prepare request; raises RemoteProtocolError."""
        self._check_file_slot(request)
        job, _ = synthesis_request(
            request, self._queues.cast, self.server.engine.catalog, self.config.limits
        )
        return job

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._file_tasks.add(task)
        task.add_done_callback(self._file_tasks.discard)

    async def _prepare_line(self, request: Prepare, synthesis: SynthesisRequest) -> None:
        try:
            duration = await self.server.engine.prepare(synthesis)
        except SynthesisError as exc:
            self.send_error(RemoteProtocolError(errors.SYNTHESIS_FAILED, str(exc), request.id))
            return
        self.send(Prepared(id=request.id, duration=duration))

    async def _render_file(self, request: Synthesize, synthesis: SynthesisRequest) -> None:
        try:
            rendered = await render_file(self.server.engine, synthesis, request.format)
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
            engine = self.server.engine
            scene = await render_scene(engine, lines, jobs, sample_rate, gap=request.gap)
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
        self.send(
            AudioFile(
                id=request.id,
                format=request.format,
                data=rendered.data,
                duration=rendered.duration,
                sample_rate=rendered.sample_rate,
            )
        )

    async def _ping(self, ping: Ping) -> bool:
        self.send(Pong(id=ping.id))
        return True

    async def _bye(self, bye: Bye) -> bool:
        self._queues.finish_all()
        return False


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


async def _start_unix_server(
    accept: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]], path: Path
) -> asyncio.Server:
    """Listen on a Unix socket that only this user can open (mode 0600 from the start)."""
    _remove_stale_socket(path)
    old_umask = os.umask(0o177)  # no window in which the socket is group/world accessible
    try:
        server = await asyncio.start_unix_server(accept, str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    return server


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a server that died; refuse to touch anything else."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
            return
    raise OSError(f"another server is listening on {path}")
