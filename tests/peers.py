"""The test suite's wire pair: protocol peers over raw TCP and over WebSocket.

Each peer speaks frames through a client-side ``Connection``, so a test can send anything
(malformed bytes included) and reads the server's replies as messages. ``open`` does the
handshake unless told not to, and fails unless the server welcomes the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from helpers import ServerThread
from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

from dialogue_tts.messages import Hello, Message
from dialogue_tts.protocol import HEADER_SIZE, NEED_DATA, Connection, Role, encode_frame

__all__ = ["GUARD", "RawPeer", "WsPeer", "web_port"]

GUARD = 120  # seconds: only to turn a hang into a failure, never a performance check


class RawPeer:
    """A bare TCP socket speaking frames, for malformed input."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.connection = Connection(Role.CLIENT)

    @classmethod
    async def open(cls, port: int, *, hello: bool = True) -> RawPeer:
        peer = cls(*await asyncio.open_connection("127.0.0.1", port))
        if hello:
            peer.send(encode_frame(Hello(protocol=1, client="raw", id=0)))
            assert (await peer.next_event()).TYPE == "welcome"
        return peer

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_event(self) -> Any:
        """The next event, or CLOSED."""
        async with asyncio.timeout(GUARD):
            while True:
                event = self.connection.next_message()
                if event is not NEED_DATA:
                    return event
                self.connection.receive_data(await self.reader.read(65536))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


def web_port(server: ServerThread) -> int:
    """The port of ``server``'s WebSocket listener (the server must have one)."""
    assert server.server is not None and server.server.web is not None
    return server.server.web.port


class WsPeer:
    """A WebSocket client speaking the protocol: one msgpack map per binary message."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket
        self.connection = Connection(Role.CLIENT)

    @classmethod
    async def open(
        cls,
        server: ServerThread,
        *,
        origin: str | None = None,
        hello: bool = True,
        token: str | None = None,
    ) -> WsPeer:
        websocket = await connect(
            f"ws://127.0.0.1:{web_port(server)}/",
            origin=None if origin is None else Origin(origin),
            open_timeout=GUARD,
        )
        peer = cls(websocket)
        if hello:
            await peer.send(Hello(protocol=1, client="ws-test", id=0, token=token))
            assert (await peer.next_event()).TYPE == "welcome"
        return peer

    async def send(self, message: Message) -> None:
        await self.websocket.send(encode_frame(message)[HEADER_SIZE:])

    async def next_event(self) -> Any:
        """The next event; each binary message must hold exactly one whole message."""
        async with asyncio.timeout(GUARD):
            data = await self.websocket.recv()
        assert isinstance(data, bytes), "the server sends binary messages only"
        self.connection.receive_data(len(data).to_bytes(HEADER_SIZE, "big") + data)
        event = self.connection.next_message()
        assert event is not NEED_DATA and self.connection.next_message() is NEED_DATA
        return event

    async def close(self) -> None:
        await self.websocket.close()
