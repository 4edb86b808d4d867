"""The WebSocket transport and the preview page, both on one HTTP port (the ``web`` extra).

A WebSocket connection is served by the same ``server.ConnectionHandler`` as a TCP
connection (handed in as a ``net.ServeConnection``: this module does not import the server),
so the protocol logic, the queues and the engine are shared. Two adapters stand in for the
stream reader and writer:

- ``MessageReader`` hands the handler each binary WebSocket message as one frame (the 4-byte
  length prefix added), taking a message from the socket only when the handler asks for
  bytes, so the handler's back-pressure (no reading while replies wait) holds.
- ``MessageWriter`` sends each frame the handler writes as one binary message (the prefix
  removed), in order, from one task; its queued bytes count as the write buffer, so the
  8 MiB limit on a client that stops reading applies as on TCP.

Browsers let any page open a WebSocket to 127.0.0.1 (CORS does not cover WebSockets), so a
handshake is accepted only from an allowed ``Origin`` (``WebAccess.refusal``). Plain HTTP
GETs serve the preview page's files from ``web/``.

When the server has a token, the page needs it for its hello, yet the page's files must not
hold it: any local process can fetch them. ``WebServer.page_url`` puts it in the URL's
fragment (``#token=...``), which the browser never sends to a server, so it reaches neither
this server's requests nor any log; the page reads it from ``location.hash``.
"""

from __future__ import annotations

import asyncio
import collections
import http
import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from .net import ServeConnection, is_loopback
from .protocol import DEFAULT_HOST, HEADER_SIZE

if TYPE_CHECKING:
    from websockets.asyncio.server import Server as WebSocketServer

__all__ = [
    "DEFAULT_WEB_PORT",
    "MessageReader",
    "MessageWriter",
    "WebAccess",
    "WebServer",
    "parse_origin",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_WEB_PORT: Final = 5758
WEB_DIR: Final = Path(__file__).resolve().parent / "web"
_STATIC_FILES: Final = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/msgpack.js": ("msgpack.js", "text/javascript; charset=utf-8"),
    "/tap-worklet.js": ("tap-worklet.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
}
"""URL path -> (file in web/, content type). Nothing else is served: no path is joined."""
_LOW_WATER: Final = 64 * 1024
"""``drain`` returns once no more than this many bytes wait to be sent (asyncio's default)."""
_HEADER = struct.Struct(">I")
_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::", ""})


def parse_origin(origin: str) -> str:
    """``origin`` in the form browsers send (``scheme://host[:port]``, lower case).

    Raises ValueError for anything else, including ``null`` (the origin of sandboxed frames
    and ``file:`` pages, which any web site can produce) and ``*``.
    """
    parts = urlsplit(origin.strip().rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not a web origin (scheme://host[:port]): {origin!r}")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"an origin has no path, query or user: {origin!r}")
    return f"{parts.scheme}://{parts.netloc}".lower()


@dataclass(frozen=True)
class WebAccess:
    """Who may use the web port: the check made on every HTTP request and WebSocket handshake.

    This is the hook for access rules on the WebSocket side. The shared-secret token is
    checked at ``hello`` by the connection's ``session.Session``, so it applies to
    WebSocket connections unchanged; browsers cannot set headers on a WebSocket, which is
    why it belongs in ``hello`` and not here.
    """

    hosts: frozenset[str]
    """Accepted ``Host`` header values (``host:port``); empty accepts any (``allow_remote``)."""
    origins: frozenset[str]
    """Accepted ``Origin`` values: the page's own and the configured ones."""

    @classmethod
    def for_port(
        cls, port: int, bind_host: str, extra_origins: Iterable[str], allow_remote: bool
    ) -> WebAccess:
        names = ["127.0.0.1", "localhost", "[::1]"]
        if bind_host not in _WILDCARD_HOSTS and not is_loopback(bind_host):
            names.append(f"[{bind_host}]" if ":" in bind_host else bind_host)
        hosts = frozenset(f"{name}:{port}" for name in names)
        own = {f"http://{host}" for host in hosts}
        origins = frozenset(own | {parse_origin(origin) for origin in extra_origins})
        return cls(hosts=frozenset() if allow_remote else hosts, origins=origins)

    def refusal(self, request: Request) -> str | None:
        """Why ``request`` is refused, or None to serve it.

        A request must name this server by a loopback address in ``Host`` (a DNS-rebinding
        page names its own domain). A WebSocket handshake with an ``Origin`` must come from
        an allowed origin. One with no ``Origin`` is accepted: every browser sends ``Origin``
        on a WebSocket handshake, so a request without one comes from a program (a native
        game, a tool), which could as well use the TCP port.
        """
        host = (request.headers.get("Host") or "").lower()
        if self.hosts and host not in self.hosts:
            return f"unexpected Host {host!r}: use http://127.0.0.1:PORT/"
        if _is_websocket(request):
            origin = request.headers.get("Origin")
            if origin is not None and origin.lower() not in self.origins:
                return (
                    f"origin {origin!r} is not allowed to use dialogue-tts; "
                    "start the server with --web-origin ORIGIN to allow it"
                )
        return None


class MessageWriter:
    """The handler's ``FrameWriter``: one binary WebSocket message per frame, in order."""

    def __init__(self, websocket: ServerConnection) -> None:
        self._websocket = websocket
        self._outgoing: collections.deque[memoryview] = collections.deque()
        self._queued_bytes = 0
        self._wake_sender = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closing = False
        self._close_code: int = CloseCode.NORMAL_CLOSURE
        self._close_reason = ""
        self._sender = asyncio.create_task(self._send_loop())

    @property
    def transport(self) -> MessageWriter:
        """The writer is its own transport view: ``get_write_buffer_size`` and ``abort``."""
        return self

    def write(self, data: bytes) -> None:
        """Queue one whole frame (prefix included) to go out as one binary message."""
        (length,) = _HEADER.unpack_from(data)
        if length != len(data) - HEADER_SIZE:
            raise ValueError("MessageWriter.write takes exactly one whole frame")
        if self._closing:
            return
        self._outgoing.append(memoryview(data)[HEADER_SIZE:])
        self._queued_bytes += length
        if self._queued_bytes > _LOW_WATER:
            self._drained.clear()
        self._wake_sender.set()

    def get_write_buffer_size(self) -> int:
        transport = self._websocket.transport
        buffered = 0 if transport.is_closing() else transport.get_write_buffer_size()
        return self._queued_bytes + buffered

    async def drain(self) -> None:
        await self._drained.wait()

    def is_closing(self) -> bool:
        return self._closing or self._websocket.state is not State.OPEN

    def close_with(self, code: int, reason: str) -> None:
        """Use this close code and reason when the connection closes."""
        self._close_code, self._close_reason = code, reason

    def close(self) -> None:
        """Close once everything queued is sent (as ``StreamWriter.close`` flushes)."""
        self._closing = True
        self._wake_sender.set()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed, closing it if that has not begun.

        (The handler may skip ``close`` when ``is_closing`` says the peer already closed.)
        """
        self.close()
        await asyncio.wait([self._sender])

    @property
    def finished(self) -> bool:
        """True once the connection is closed or aborted."""
        return self._sender.done()

    def abort(self) -> None:
        """Drop the client now, unsent messages and all."""
        self._closing = True
        self._sender.cancel()
        self._forget_queue()
        self._websocket.transport.abort()

    async def _send_loop(self) -> None:
        try:
            while True:
                while self._outgoing:
                    await self._websocket.send(self._outgoing[0])
                    self._queued_bytes -= len(self._outgoing.popleft())
                    if self._queued_bytes <= _LOW_WATER:
                        self._drained.set()
                if self._closing:
                    break
                self._wake_sender.clear()
                await self._wake_sender.wait()
            await self._websocket.close(self._close_code, self._close_reason)
        except ConnectionClosed:
            pass
        finally:
            self._closing = True
            self._forget_queue()

    def _forget_queue(self) -> None:
        self._outgoing.clear()
        self._queued_bytes = 0
        self._drained.set()  # nobody waits on a connection that is gone


class MessageReader:
    """The handler's ``FrameReader``: the bytes of one frame per binary WebSocket message.

    A text message closes the connection with code 1003 (unsupported data): the protocol
    is msgpack in binary messages. A message over ``max_frame`` never reaches this class:
    the websockets library closes with 1009 (message too big) without buffering it.
    """

    def __init__(self, websocket: ServerConnection, writer: MessageWriter) -> None:
        self._websocket = websocket
        self._writer = writer
        self._pending = memoryview(b"")
        """What the handler has not read yet of the current frame (sliced without copying)."""

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all of a frame when ``n`` < 0); ``b""`` at end of stream."""
        if not self._pending:
            try:
                message = await self._websocket.recv()
            except ConnectionClosed:
                self._writer.close()  # the peer is gone: stop the sender too
                return b""
            if isinstance(message, str):
                self._writer.close_with(
                    CloseCode.UNSUPPORTED_DATA,
                    "dialogue-tts takes msgpack in binary messages, not text",
                )
                return b""
            self._pending = memoryview(_HEADER.pack(len(message)) + message)
        size = len(self._pending) if n < 0 else min(n, len(self._pending))
        data, self._pending = bytes(self._pending[:size]), self._pending[size:]
        return data


class WebServer:
    """Serves WebSocket connections and the preview page's files on one port."""

    def __init__(
        self, serve_connection: ServeConnection, websockets: WebSocketServer, access: WebAccess
    ) -> None:
        self._serve_connection = serve_connection
        self._websockets = websockets
        self.access = access
        host, self.port = websockets.sockets[0].getsockname()[:2]
        host = DEFAULT_HOST if host in _WILDCARD_HOSTS else host
        self.url = f"http://[{host}]:{self.port}/" if ":" in host else f"http://{host}:{self.port}/"
        """The preview page (its WebSocket is the same address with ``ws://``)."""

    def page_url(self, token: str | None = None) -> str:
        """The page's address to give the user: with the token, if any, in the fragment."""
        return self.url if token is None else f"{self.url}#token={quote(token, safe='')}"

    @classmethod
    async def start(
        cls,
        serve_connection: ServeConnection,
        port: int,
        *,
        host: str = DEFAULT_HOST,
        origins: Iterable[str] = (),
        allow_remote: bool = False,
        max_frame: int,
    ) -> WebServer:
        """Listen on ``port`` at ``host`` (the TCP listener's: loopback unless allow_remote)
        and hand each WebSocket connection to ``serve_connection``. ``origins`` are the page
        origins allowed besides the preview page's own."""
        extra_origins = [parse_origin(origin) for origin in origins]  # before binding
        started = asyncio.get_running_loop().create_future()  # the WebServer, once built

        async def handle(websocket: ServerConnection) -> None:
            await (await started)._serve_websocket(websocket)

        async def process_request(websocket: ServerConnection, request: Request) -> Response | None:
            return (await started)._process_request(request)

        websockets = await serve(
            handle, host, port,
            process_request=process_request,
            max_size=max_frame,  # over it: close 1009, nothing buffered
            compression=None,  # speech does not deflate; spare the CPU for inference
            server_header=None,
        )  # fmt: skip
        bound_port = websockets.sockets[0].getsockname()[1]
        access = WebAccess.for_port(bound_port, host, extra_origins, allow_remote)
        web = cls(serve_connection, websockets, access)
        started.set_result(web)
        return web

    # --- Listener ----------------------------------------------------------------------

    def close(self) -> None:
        self._websockets.close()

    async def wait_closed(self) -> None:
        await self._websockets.wait_closed()

    async def serve_forever(self) -> None:
        await self._websockets.serve_forever()

    # --- requests ----------------------------------------------------------------------

    def _process_request(self, request: Request) -> Response | None:
        """Refuse, serve a file, or return None to go on with a WebSocket handshake."""
        refusal = self.access.refusal(request)
        if refusal is not None:
            _LOGGER.warning("Refused a web request: %s", refusal)
            return _text_response(http.HTTPStatus.FORBIDDEN, refusal + "\n")
        if _is_websocket(request):
            return None
        path = request.path.split("?", 1)[0]
        entry = _STATIC_FILES.get(path)
        if entry is None:
            return _text_response(http.HTTPStatus.NOT_FOUND, "not found\n")
        name, content_type = entry
        body = (WEB_DIR / name).read_bytes()
        host = request.headers.get("Host", "")
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-cache"),
                ("X-Content-Type-Options", "nosniff"),
                ("Content-Security-Policy",
                 f"default-src 'self'; connect-src 'self' ws://{host}; img-src 'self' data:; "
                 "frame-ancestors 'none'"),
                ("Connection", "close"),
            ]
        )  # fmt: skip
        return Response(http.HTTPStatus.OK, "OK", headers, body)

    async def _serve_websocket(self, websocket: ServerConnection) -> None:
        writer = MessageWriter(websocket)
        try:
            await self._serve_connection(MessageReader(websocket, writer), writer)
        finally:
            if not writer.finished:  # the handler failed before closing its writer
                writer.abort()
                await writer.wait_closed()  # its sender task, cancelled, has ended


def _is_websocket(request: Request) -> bool:
    return "websocket" in request.headers.get("Upgrade", "").lower()


def _text_response(status: http.HTTPStatus, text: str) -> Response:
    body = text.encode()
    headers = Headers(
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)
