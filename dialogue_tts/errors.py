"""Protocol errors and their stable wire codes.

As in h11, an error names the side at fault: ``RemoteProtocolError`` means the peer sent
something wrong (it becomes an ``error`` frame), ``LocalProtocolError`` means this side
misused the API (a bug in the caller, never sent on the wire).
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ALREADY_HELLO",
    "EMPTY_TEXT",
    "FRAME_TOO_LARGE",
    "HELLO_REQUIRED",
    "INTERNAL_ERROR",
    "INVALID_CAST",
    "INVALID_FIELD",
    "INVALID_FRAME",
    "INVALID_MESSAGE",
    "LINE_IN_USE",
    "QUEUE_FULL",
    "RESULT_TOO_LARGE",
    "SERVER_BUSY",
    "SYNTHESIS_FAILED",
    "TEXT_TOO_LONG",
    "TIMEOUT",
    "TOO_MANY_SPEAKERS",
    "UNAUTHORIZED",
    "UNKNOWN_LINE",
    "UNKNOWN_STYLE",
    "UNKNOWN_TYPE",
    "UNKNOWN_VOICE",
    "UNSUPPORTED_PROTOCOL",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]

# Framing: the frame cannot be read at all. FRAME_TOO_LARGE closes the connection,
# because the stream position after an oversized length prefix cannot be trusted.
FRAME_TOO_LARGE: Final = "frame_too_large"
INVALID_FRAME: Final = "invalid_frame"  # well delimited, but not msgpack
# Message level: the frame decoded, the message is wrong. The connection stays usable.
INVALID_MESSAGE: Final = "invalid_message"  # not a map, or no string "type"
UNKNOWN_TYPE: Final = "unknown_type"
INVALID_FIELD: Final = "invalid_field"  # missing, ill-typed or out-of-range field
HELLO_REQUIRED: Final = "hello_required"
ALREADY_HELLO: Final = "already_hello"
UNSUPPORTED_PROTOCOL: Final = "unsupported_protocol"  # sent, then the server closes
EMPTY_TEXT: Final = "empty_text"
TEXT_TOO_LONG: Final = "text_too_long"
# Server policy and state.
QUEUE_FULL: Final = "queue_full"
TOO_MANY_SPEAKERS: Final = "too_many_speakers"
SERVER_BUSY: Final = "server_busy"  # too many connections; sent, then closed
UNKNOWN_VOICE: Final = "unknown_voice"
UNKNOWN_STYLE: Final = "unknown_style"  # the cast has no such style for that speaker
INVALID_CAST: Final = "invalid_cast"  # the hello's cast; sent, then the server closes
UNAUTHORIZED: Final = "unauthorized"  # wrong or missing token at hello; sent, then closed
UNKNOWN_LINE: Final = "unknown_line"
LINE_IN_USE: Final = "line_in_use"  # a client-chosen line id that is still queued or playing
RESULT_TOO_LARGE: Final = "result_too_large"
SYNTHESIS_FAILED: Final = "synthesis_failed"
TIMEOUT: Final = "timeout"  # no hello in time; sent, then closed
INTERNAL_ERROR: Final = "internal_error"


class ProtocolError(Exception):
    """A protocol violation with a stable snake_case ``code`` for the wire.

    ``request_id`` is the "id" of the request at fault when it could be read, so the
    error frame can echo it. ``fatal`` errors close the connection after the error frame.
    """

    def __init__(
        self,
        code: str,
        message: str,
        request_id: int | str | None = None,
        *,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.fatal = fatal

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.request_id!r})"


class LocalProtocolError(ProtocolError):
    """This side tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
