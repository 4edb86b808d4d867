"""What the transports share: the shapes of a connection's streams, and the loopback rule.

TCP and Unix sockets (``server.py``) and WebSocket (``websocket.py``) each hand a connection
to the server as a ``FrameReader`` and a ``FrameWriter``; ``ServeConnection`` is what serves
it. Keeping these here lets ``websocket.py`` stand beside ``server.py`` instead of importing
it: whoever wires the two (``Server.start``) passes ``Server.serve_connection`` in.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

__all__ = [
    "FrameReader",
    "FrameWriter",
    "Listener",
    "ServeConnection",
    "WriteBuffer",
    "is_loopback",
]


class FrameReader(Protocol):
    """The part of ``asyncio.StreamReader`` a handler reads frames' bytes from."""

    async def read(self, n: int = -1) -> bytes: ...


class WriteBuffer(Protocol):
    """The part of a transport a handler uses: back-pressure and dropping the client."""

    def get_write_buffer_size(self) -> int: ...

    def abort(self) -> None: ...


class FrameWriter(Protocol):
    """The part of ``asyncio.StreamWriter`` a handler writes whole frames to."""

    @property
    def transport(self) -> WriteBuffer: ...

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def is_closing(self) -> bool: ...

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...


class ServeConnection(Protocol):
    """Serves one connection, from any transport, until it closes
    (``Server.serve_connection``)."""

    async def __call__(self, reader: FrameReader, writer: FrameWriter, /) -> None: ...


class Listener(Protocol):
    """What the server needs of a listening socket (``asyncio.Server`` and the web server)."""

    def close(self) -> None: ...

    async def wait_closed(self) -> None: ...

    async def serve_forever(self) -> None: ...


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
