"""The asyncio transport: TCP on loopback and a Unix socket, one handler per connection.

The handler is the connection's I/O pump: it moves bytes between the socket and a sans-I/O
``protocol.Connection``, hands each request to the connection's ``session.Session`` (which
answers it), and is the ``Outbox`` of the session and its speaker queues. WebSocket
connections (``websocket.py``) are served by the same handler through a reader and a writer
adapter: ``Server.start`` hands ``serve_connection`` to the web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from . import errors
from .cast import DEFAULT_CAST, Cast
from .engine import Engine
from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .jobs import DEFAULT_LIMITS, Limits
from .messages import Event
from .net import FrameReader, FrameWriter, Listener, is_loopback
from .protocol import (
    CLOSED,
    DEFAULT_HOST,
    DEFAULT_MAX_FRAME,
    DEFAULT_PORT,
    NEED_DATA,
    Connection,
    Role,
)
from .session import Session

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
        """Load and warm up the default voice and the voices of the cast, then listen."""
        config = self.config
        if config.host is not None and not is_loopback(config.host) and not config.allow_remote:
            raise ValueError(  # before seconds of loading voices
                f"refusing to listen on {config.host}: not a loopback address "
                "(pass allow_remote / --allow-remote to do it anyway)"
            )
        await self.engine.voice()
        await self.engine.load_voices(config.cast.voices())
        if config.host is not None:
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
    """The I/O pump of one client connection: reads frames and hands each request to the
    connection's ``Session``; writes the frames of what the session and its queues send,
    bounding what waits for a client that does not read; closes the connection."""

    def __init__(self, server: Server, reader: FrameReader, writer: FrameWriter) -> None:
        self.config = server.config
        self._reader = reader
        self._writer = writer
        self._connection = Connection(Role.SERVER, self.config.max_frame)
        self._large_unread = 0
        """Bytes of large frames (files) written since the client last caught up."""
        self._server = server
        self.session: Session | None = None
        """The connection's session, while ``run`` runs."""

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
        """Serve the connection until it closes. Its tasks (speakers, lines, files) belong
        to one task group: when the connection ends they are cancelled, and waited for."""
        try:
            async with asyncio.TaskGroup() as tasks:
                engine = self._server.engine
                session = self.session = Session(engine, self, self.config, tasks.create_task)
                try:
                    await self._read_loop(session)
                except (ConnectionError, asyncio.IncompleteReadError):
                    pass
                except TimeoutError:
                    self.send_error(RemoteProtocolError(errors.TIMEOUT, "no hello in time"))
                finally:
                    session.close()
        finally:
            self.session = None
            await self.close()

    async def _read_loop(self, session: Session) -> None:
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
                if not await session.handle_message(message):
                    return
            # Back-pressure: read no more requests while replies wait for this client.
            await self.drain()

    def abort(self) -> None:
        self._writer.transport.abort()

    async def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


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
