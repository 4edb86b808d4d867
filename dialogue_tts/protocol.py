"""The dialogue-tts wire protocol as pure code: bytes in, messages out, and back.

No sockets, no asyncio, no clocks, in the manner of h11: the transport feeds received bytes to
``Connection.receive_data`` and pulls messages with ``next_message``, which returns
``NEED_DATA`` until a whole frame is buffered and ``CLOSED`` after end of stream.
``Connection.send`` turns a message into frame bytes for the transport to write.

A frame is a 4-byte big-endian length N (1..max_frame) and N bytes of one msgpack map.
"""

from __future__ import annotations

import enum
import struct
from typing import Any, Final

import msgpack

from . import errors
from .errors import LocalProtocolError, RemoteProtocolError
from .messages import (
    EVENT_TYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Error,
    Event,
    Hello,
    InvalidMessage,
    Message,
    Request,
)

__all__ = [
    "CLOSED",
    "DEFAULT_HOST",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_PORT",
    "HEADER_SIZE",
    "NEED_DATA",
    "Connection",
    "FrameDecoder",
    "Role",
    "Signal",
    "decode_payload",
    "encode_frame",
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 5757
HEADER_SIZE: Final = 4
DEFAULT_MAX_FRAME: Final = 1024 * 1024
"""Largest frame a peer accepts by default (1 MiB)."""
MAX_EVENT_FRAME: Final = 64 * 1024 * 1024
"""Largest frame the server ever sends (an audio_file of a long line); clients accept this."""
_HEADER = struct.Struct(">I")


class Signal(enum.Enum):
    """What ``next_message`` returns when it has no message."""

    NEED_DATA = "need_data"
    CLOSED = "closed"


NEED_DATA: Final = Signal.NEED_DATA
CLOSED: Final = Signal.CLOSED


class Role(enum.Enum):
    SERVER = "server"  # receives requests, sends events
    CLIENT = "client"  # receives events, sends requests


def encode_frame(message: Message, max_frame: int = MAX_EVENT_FRAME) -> bytes:
    """Encode one message as a length-prefixed msgpack frame."""
    payload = msgpack.packb(message.to_dict(), use_bin_type=True)
    if len(payload) > max_frame:
        raise LocalProtocolError(
            errors.RESULT_TOO_LARGE, f"{message.TYPE} frame of {len(payload)} bytes > {max_frame}"
        )
    return _HEADER.pack(len(payload)) + payload


def _string_keyed(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A map whose keys are all strings; msgpack's strict_map_key also lets bin keys in."""
    if not all(isinstance(key, str) for key, _ in pairs):
        raise ValueError("map keys must be strings")
    return dict(pairs)


def decode_payload(payload: bytes) -> dict[str, Any]:
    """Decode one frame's payload to a map with a string "type"; raises RemoteProtocolError."""
    try:
        data = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, object_pairs_hook=_string_keyed
        )
    except (ValueError, msgpack.UnpackException) as exc:
        # ExtraData, FormatError, StackError and UnicodeDecodeError are all ValueErrors.
        raise RemoteProtocolError(
            errors.INVALID_FRAME, f"frame is not valid msgpack: {exc}"
        ) from exc
    if not isinstance(data, dict):
        raise RemoteProtocolError(
            errors.INVALID_MESSAGE, f"a frame must hold a map, not {type(data).__name__}"
        )
    if not isinstance(data.get("type"), str):
        raise RemoteProtocolError(
            errors.INVALID_MESSAGE, "missing string 'type'", _request_id(data)
        )
    return data


def _request_id(data: dict[str, Any]) -> int | str | None:
    """The map's "id" if it is usable for echoing, else None."""
    request_id = data.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    return request_id


class FrameDecoder:
    """Splits a byte stream into frame payloads, never buffering more than one frame."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next_payload(self) -> bytes | None:
        """The next whole frame's payload, or None until more bytes arrive.

        Raises a fatal RemoteProtocolError for a length over ``max_frame``, checked before
        anything of that size is buffered, and a recoverable one for an empty frame.
        """
        if len(self._buffer) < HEADER_SIZE:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self.max_frame:
            raise RemoteProtocolError(
                errors.FRAME_TOO_LARGE,
                f"frame length {length} is over the limit of {self.max_frame}",
                fatal=True,
            )
        if length == 0:
            del self._buffer[:HEADER_SIZE]
            raise RemoteProtocolError(errors.INVALID_FRAME, "empty frame (length 0)")
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        payload = bytes(self._buffer[HEADER_SIZE:end])
        del self._buffer[:end]
        return payload


class Connection:
    """One side of a dialogue-tts connection.

    The server side enforces the handshake: any request before "hello" raises
    ``hello_required`` (recoverable), and an unsupported protocol version raises a fatal
    ``unsupported_protocol``. After a fatal error every call to ``next_message`` raises it
    again; the transport sends the error frame and closes.
    """

    def __init__(self, role: Role, max_frame: int | None = None) -> None:
        self.role = role
        if max_frame is None:
            max_frame = DEFAULT_MAX_FRAME if role is Role.SERVER else MAX_EVENT_FRAME
        self._decoder = FrameDecoder(max_frame)
        self._types: dict[str, type[Message]] = dict(
            REQUEST_TYPES if role is Role.SERVER else EVENT_TYPES
        )
        self._eof = False
        self._fatal: RemoteProtocolError | None = None
        self.hello: Hello | None = None
        """The peer's hello, once received (server side)."""

    @property
    def max_frame(self) -> int:
        return self._decoder.max_frame

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes from the peer; ``b""`` means end of stream."""
        if self._eof and data:
            raise LocalProtocolError(errors.INTERNAL_ERROR, "data received after end of stream")
        if data:
            self._decoder.feed(data)
        else:
            self._eof = True

    def next_message(self) -> Message | Signal:
        """The next message, ``NEED_DATA`` or ``CLOSED``.

        Raises ``RemoteProtocolError`` for a bad frame or message. Unless the error is
        ``fatal``, the bad frame has been consumed and the connection can go on.
        """
        if self._fatal is not None:
            raise self._fatal
        try:
            payload = self._decoder.next_payload()
        except RemoteProtocolError as exc:
            if exc.fatal:
                self._fatal = exc
            raise
        if payload is None:
            if self._eof:
                return CLOSED
            return NEED_DATA
        data = decode_payload(payload)
        request_id = _request_id(data)
        message_type = self._types.get(data["type"])
        if message_type is None:
            raise RemoteProtocolError(
                errors.UNKNOWN_TYPE, f"unknown message type {data['type']!r}", request_id
            )
        try:
            message = message_type.from_dict(data)
        except InvalidMessage as exc:
            raise RemoteProtocolError(exc.code, str(exc), request_id) from exc
        if self.role is Role.SERVER:
            self._check_handshake(message, request_id)
        return message

    def _check_handshake(self, message: Message, request_id: int | str | None) -> None:
        if isinstance(message, Hello):
            if self.hello is not None:
                raise RemoteProtocolError(
                    errors.ALREADY_HELLO, "hello was already sent", request_id
                )
            if message.protocol != PROTOCOL_VERSION:
                self._fatal = RemoteProtocolError(
                    errors.UNSUPPORTED_PROTOCOL,
                    f"protocol {message.protocol} is not supported; this server speaks "
                    f"{PROTOCOL_VERSION}",
                    request_id,
                    fatal=True,
                )
                raise self._fatal
            self.hello = message
        elif self.hello is None:
            raise RemoteProtocolError(
                errors.HELLO_REQUIRED, f"send hello before {message.TYPE}", request_id
            )

    def send(self, message: Message) -> bytes:
        """The frame bytes for ``message``; raises LocalProtocolError for the wrong direction."""
        expected = Event if self.role is Role.SERVER else Request
        if not isinstance(message, expected):
            raise LocalProtocolError(
                errors.INTERNAL_ERROR, f"a {self.role.value} cannot send {message.TYPE}"
            )
        if isinstance(message, Request):
            try:
                message.check()
            except InvalidMessage as exc:
                raise LocalProtocolError(exc.code, str(exc), message.id) from exc
        return encode_frame(message)

    @staticmethod
    def error_for(exc: errors.ProtocolError) -> Error:
        """The error event that reports ``exc`` to the peer."""
        return Error(id=exc.request_id, code=exc.code, message=exc.message)
