"""A pure-Python client for dialogue-tts, made for Ren'Py (Python 3.9 and newer, no packages).

    connection = Connection(port=5757)
    connection.start()                     # connects in a background thread
    connection.send({"type": "say", "speaker": "e", "text": "Hello."})
    for event in connection.poll():        # never blocks
        ...

``ServerProcess`` starts a bundled server (``dialogue-tts bundle``) as the game's child, with a
fresh token, and ``Connection(server=...)`` waits for it to listen before connecting.

``Speech`` builds Ren'Py's voice behaviour on top: one line plays at a time, a new line stops
the previous one, audio comes back as small .au files for the "voice" channel, and the last
lines are cached so that rollback replays them at once; a server that refuses the game (a
wrong token) is reported once and not asked again. A line said with ``reveal=True`` also
collects its word marks, and ``Speech.reveal`` tells how much of its text the voice has said
(``revealed_length``), which ``hide_after`` turns into Ren'Py text that shows only that much.
``walk_ahead`` finds the next say statements on the script's path, and ``Speech.look_ahead``
has the server prepare them and fetches their audio, so that they play at once; a line said
live is waited for, briefly, as its interaction starts (``Speech.wait_for_voice``), so that it
starts with its text.
Nothing here imports Ren'Py, so the module runs (and is tested) outside it. The wire format
is protocol/PROTOCOL.md: frames of a 4-byte big-endian length and one msgpack map; the
msgpack codec below is a small one of our own, so that game developers install nothing.
"""

from __future__ import annotations

import array
import collections
import contextlib
import ipaddress
import os
import re
import secrets
import select
import socket
import struct
import subprocess
import sys
import threading
import time

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "REFUSALS",
    "Chunk",
    "Connection",
    "FrameReader",
    "ProtocolError",
    "ServerProcess",
    "Speech",
    "au_bytes",
    "chunk_filename",
    "encode_frame",
    "hide_after",
    "line_request",
    "packb",
    "revealed_length",
    "unpackb",
    "walk_ahead",
    "wav_samples",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5757
PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
"""Largest frame accepted from the server (an audio_file holds a whole line)."""
REFUSALS = {
    "unauthorized": "set dialogue_tts.token, or DIALOGUE_TTS_TOKEN, to the server's token",
    "invalid_cast": "fix dialogue_tts.cast or dialogue_tts.cast_file",
    "unsupported_protocol": "use a binding and a server of the same protocol version",
}
"""Errors with which the server refuses a hello and closes, and what to fix: retrying would
only repeat them, so ``Speech`` stops asking."""
_DONT_WAIT = getattr(socket, "MSG_DONTWAIT", 0)
"""A send that never waits (POSIX); elsewhere, a send waits only while the socket's buffer
is full, which a few small frames on loopback never fill."""
_MAX_DEPTH = 64
_HEADER = struct.Struct(">I")


class ProtocolError(ValueError):
    """Bytes that are not valid dialogue-tts frames or msgpack."""


# --- msgpack ------------------------------------------------------------------------------
# Only what the protocol uses: nil, bool, int, float, str, bin, array, map. Integers are
# written in their smallest form and floats as float64, as protocol/vectors.json expects.


def packb(value: object) -> bytes:
    """Encode ``value`` as msgpack (map keys must be strings; bytes become bin)."""
    out = bytearray()
    _pack(value, out, 0)
    return bytes(out)


def _pack(value: object, out: bytearray, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        _pack_int(value, out)
    elif isinstance(value, float):
        out.append(0xCB)
        out += struct.pack(">d", value)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _pack_length(len(data), out, 0xA0, 32, 0xD9, 0xDA, 0xDB)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        _pack_length(len(data), out, None, 0, 0xC4, 0xC5, 0xC6)
        out += data
    elif isinstance(value, (list, tuple)):
        _pack_length(len(value), out, 0x90, 16, None, 0xDC, 0xDD)
        for item in value:
            _pack(item, out, depth + 1)
    elif isinstance(value, dict):
        _pack_length(len(value), out, 0x80, 16, None, 0xDE, 0xDF)
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map keys must be strings, not {type(key).__name__}")
            _pack(key, out, depth + 1)
            _pack(item, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__} as msgpack")


def _pack_int(value: int, out: bytearray) -> None:
    if 0 <= value < 0x80:
        out.append(value)
    elif -32 <= value < 0:
        out.append(value & 0xFF)
    elif value >= 0:
        for code, fmt, limit in ((0xCC, ">B", 1 << 8), (0xCD, ">H", 1 << 16),
                                 (0xCE, ">I", 1 << 32), (0xCF, ">Q", 1 << 64)):  # fmt: skip
            if value < limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        raise OverflowError("integer too large for msgpack")
    else:
        for code, fmt, limit in ((0xD0, ">b", 1 << 7), (0xD1, ">h", 1 << 15),
                                 (0xD2, ">i", 1 << 31), (0xD3, ">q", 1 << 63)):  # fmt: skip
            if value >= -limit:
                out.append(code)
                out += struct.pack(fmt, value)
                return
        raise OverflowError("integer too small for msgpack")


def _pack_length(
    length: int, out: bytearray, fix: int | None, fix_limit: int, c8: int | None, c16: int, c32: int
) -> None:
    if fix is not None and length < fix_limit:
        out.append(fix | length)
    elif c8 is not None and length < 0x100:
        out += bytes((c8, length))
    elif length < 0x10000:
        out.append(c16)
        out += struct.pack(">H", length)
    elif length < 0x100000000:
        out.append(c32)
        out += struct.pack(">I", length)
    else:
        raise OverflowError("too long for msgpack")


def unpackb(data: bytes) -> object:
    """Decode exactly one msgpack value that fills ``data``; raises ProtocolError."""
    view = memoryview(bytes(data))
    try:
        value, end = _unpack(view, 0, 0)
    except (IndexError, struct.error):
        raise ProtocolError("truncated msgpack") from None
    except UnicodeDecodeError:
        raise ProtocolError("msgpack str is not UTF-8") from None
    if end != len(view):
        raise ProtocolError("extra bytes after the msgpack value")
    return value


# Fixed-size types: code -> (struct format, size).
_FIXED = {
    0xCA: (">f", 4), 0xCB: (">d", 8),
    0xCC: (">B", 1), 0xCD: (">H", 2), 0xCE: (">I", 4), 0xCF: (">Q", 8),
    0xD0: (">b", 1), 0xD1: (">h", 2), 0xD2: (">i", 4), 0xD3: (">q", 8),
}  # fmt: skip
# Variable-size types: code -> (kind, size of the length field).
_SIZED = {
    0xD9: ("str", 1), 0xDA: ("str", 2), 0xDB: ("str", 4),
    0xC4: ("bin", 1), 0xC5: ("bin", 2), 0xC6: ("bin", 4),
    0xDC: ("array", 2), 0xDD: ("array", 4), 0xDE: ("map", 2), 0xDF: ("map", 4),
}  # fmt: skip
_LENGTH_FORMATS = {1: ">B", 2: ">H", 4: ">I"}


def _unpack(view: memoryview, pos: int, depth: int) -> tuple[object, int]:
    if depth > _MAX_DEPTH:
        raise ProtocolError("msgpack nested too deeply")
    code = view[pos]
    pos += 1
    if code <= 0x7F:
        return code, pos
    if code >= 0xE0:
        return code - 0x100, pos
    if 0x80 <= code <= 0x8F:
        return _unpack_map(view, pos, code & 0x0F, depth)
    if 0x90 <= code <= 0x9F:
        return _unpack_array(view, pos, code & 0x0F, depth)
    if 0xA0 <= code <= 0xBF:
        return _take_str(view, pos, code & 0x1F)
    if code == 0xC0:
        return None, pos
    if code in (0xC2, 0xC3):
        return code == 0xC3, pos
    if code in _FIXED:
        fmt, size = _FIXED[code]
        if pos + size > len(view):
            raise IndexError
        return struct.unpack_from(fmt, view, pos)[0], pos + size
    if code in _SIZED:
        kind, size = _SIZED[code]
        (length,) = struct.unpack_from(_LENGTH_FORMATS[size], view, pos)
        pos += size
        if kind == "str":
            return _take_str(view, pos, length)
        if kind == "bin":
            return _take(view, pos, length), pos + length
        if kind == "array":
            return _unpack_array(view, pos, length, depth)
        return _unpack_map(view, pos, length, depth)
    raise ProtocolError(f"unsupported msgpack type 0x{code:02x}")


def _take(view: memoryview, pos: int, length: int) -> bytes:
    if pos + length > len(view):
        raise IndexError
    return bytes(view[pos : pos + length])


def _take_str(view: memoryview, pos: int, length: int) -> tuple[str, int]:
    return _take(view, pos, length).decode("utf-8"), pos + length


def _unpack_array(view: memoryview, pos: int, length: int, depth: int) -> tuple[list, int]:
    items = []
    for _ in range(length):
        item, pos = _unpack(view, pos, depth + 1)
        items.append(item)
    return items, pos


def _unpack_map(view: memoryview, pos: int, length: int, depth: int) -> tuple[dict, int]:
    result = {}
    for _ in range(length):
        key, pos = _unpack(view, pos, depth + 1)
        if not isinstance(key, str):
            raise ProtocolError("map keys must be strings")
        result[key], pos = _unpack(view, pos, depth + 1)
    return result, pos


# --- frames -------------------------------------------------------------------------------


def encode_frame(message: dict) -> bytes:
    """One message (a dict with a "type") as a length-prefixed frame."""
    payload = packb(message)
    return _HEADER.pack(len(payload)) + payload


class FrameReader:
    """Turns received bytes into messages, however the stream was cut into pieces."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict]:
        """Buffer ``data``; return the messages completed by it (raises ProtocolError)."""
        self._buffer += data
        messages = []
        while len(self._buffer) >= 4:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length == 0 or length > self.max_frame:
                raise ProtocolError(f"bad frame length {length}")
            if len(self._buffer) < 4 + length:
                break
            payload = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            message = unpackb(payload)
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                raise ProtocolError("a frame must hold a map with a string 'type'")
            messages.append(message)
        return messages


def au_bytes(pcm: bytes, sample_rate: int) -> bytes:
    """A Sun .au file (mono, 16-bit big-endian) around little-endian 16-bit PCM samples.

    .au rather than .wav: every Ren'Py build decodes it (Ren'Py's own ffmpeg has the "au"
    demuxer), while some distribution builds (Debian's Ren'Py 8.0.3) play WAV as endless
    silence. The header is 24 bytes; samples are big-endian, so they are byte-swapped here.
    """
    samples = array.array("h")
    samples.frombytes(bytes(pcm[: len(pcm) - len(pcm) % 2]))
    if sys.byteorder == "little":
        samples.byteswap()
    data = samples.tobytes()
    return struct.pack(">4sIIIII", b".snd", 24, len(data), 3, sample_rate, 1) + data


def wav_samples(data: bytes) -> tuple[bytes, int] | None:
    """The samples (16-bit little-endian) and sample rate of a 16-bit mono PCM WAV file, as
    the server's ``synthesize`` writes them; None for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, sample_rate = 12, None
    while pos + 8 <= len(data):
        kind, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = data[pos + 8 : pos + 8 + size]
        if kind == b"fmt " and len(body) >= 16:
            audio_format, channels, rate = struct.unpack_from("<HHI", body)
            bits = struct.unpack_from("<H", body, 14)[0]
            if audio_format not in (1, 0xFFFE) or channels != 1 or bits != 16:
                return None
            sample_rate = rate
        elif kind == b"data" and sample_rate is not None:
            return bytes(body), sample_rate
        pos += 8 + size + size % 2
    return None


# --- connection ---------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _daemon_thread(function: object) -> None:
    threading.Thread(target=function, name="dialogue-tts", daemon=True).start()


class Connection:
    """One connection to a dialogue-tts server, run by a background thread.

    ``send`` only queues a message and ``poll`` only takes what has arrived, so the caller
    (the game's main thread) never waits on the network. When the connection fails or ends,
    ``poll`` returns a last ``{"type": "closed", "message": why}`` and ``closed`` is true.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        client_name: str = "renpy",
        pace: bool = True,
        timeout: float = 3.0,
        allow_remote: bool = False,
        token: str | None = None,
        cast: dict | str | None = None,
        server: ServerProcess | None = None,
    ) -> None:
        """``token``: the server's shared secret, if it was started with one. ``cast``: the
        game's cast (a dict shaped like a cast file, or its TOML text) for this connection.
        ``server``: a started ``ServerProcess`` to connect to, on the port it reports and with
        its token, once it listens (``host`` and ``port`` are then not used)."""
        if not allow_remote and not _is_loopback(host):
            raise ValueError(f"{host!r} is not a loopback address (pass allow_remote=True)")
        self.host = host
        self.port = port
        self.server = server
        if server is not None:
            self.host, self.port, token = DEFAULT_HOST, 0, server.token
        self.timeout = timeout
        self.welcome: dict | None = None
        self.closed = False
        self._hello = {"type": "hello", "protocol": PROTOCOL_VERSION, "client": client_name,
                       "pace": pace}  # fmt: skip
        if token:
            self._hello["token"] = token
        if cast is not None:
            self._hello["cast"] = cast
        self._outbox: collections.deque[bytes] = collections.deque()
        self._inbox: collections.deque[dict] = collections.deque()
        self._closing = False
        # The game's thread sends and reads too (see ``send`` and ``poll``): one at a time.
        self._lock = threading.Lock()
        self._arrived = threading.Condition()  # notified as messages reach the inbox
        self._sock: socket.socket | None = None  # once the hello is sent
        self._reader = FrameReader()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)

    def start(self, start_thread: object = None) -> Connection:
        """Connect in the background. ``start_thread(function)`` runs ``function`` in a thread
        (Ren'Py passes ``renpy.invoke_in_thread``); by default a daemon thread."""
        (start_thread or _daemon_thread)(self._run)  # type: ignore[operator]
        return self

    def send(self, message: dict) -> bool:
        """Send ``message`` to the server, or queue it for the background thread; never
        waits. False if the connection is closed.

        The caller's thread sends at once when it can: a game's main thread that is busy
        drawing a frame holds Python's GIL for long stretches (a few hundred milliseconds
        in a software-rendered, headless Ren'Py), and the background thread could not send
        the line until the frame is done."""
        if self.closed or self._closing:
            return False
        self._outbox.append(encode_frame(message))
        if not self._now(self._flush):
            self._wake()
        return True

    def poll(self) -> list[dict]:
        """The messages received since the last call, oldest first. Reads what the socket
        holds now (never waits), for the same reason as ``send``."""
        self._now(self._receive)
        messages = []
        while self._inbox:
            messages.append(self._inbox.popleft())
        return messages

    def wait(self, timeout: float) -> bool:
        """Wait until a message is there for ``poll``, or the connection has closed, at most
        ``timeout`` seconds; True if one is there. The only call here that waits: for a
        caller that chose to (``Speech.wait_for_voice``). Waiting releases the GIL, so the
        background thread reads meanwhile."""
        self._now(self._receive)
        with self._arrived:
            return self._arrived.wait_for(lambda: bool(self._inbox) or self.closed, timeout)

    def close(self) -> None:
        """Say bye and close (in the background)."""
        if not self.closed and not self._closing:
            self._outbox.append(encode_frame({"type": "bye"}))
            self._closing = True
            self._wake()

    def _now(self, work: object) -> bool:
        """Run ``work(sock)`` in this thread if the socket is free; True if it ran whole."""
        if self.closed or not self._lock.acquire(blocking=False):
            return False
        try:
            sock = self._sock  # None once the background thread has closed it
            if sock is None:
                return False
            work(sock)  # type: ignore[operator]
            return True
        except (OSError, ProtocolError):
            return False  # the background thread meets it too, and reports it
        finally:
            self._lock.release()

    def _flush(self, sock: socket.socket) -> None:
        while self._outbox:
            frame = self._outbox[0]
            sent = sock.send(frame, _DONT_WAIT)
            if sent < len(frame):
                self._outbox[0] = frame[sent:]
                raise BlockingIOError  # the rest goes when the socket can take it
            self._outbox.popleft()

    def _receive(self, sock: socket.socket) -> bool:
        """Read what has arrived, without waiting; False once the server has closed."""
        while select.select([sock], [], [], 0)[0]:
            data = sock.recv(65536)
            if not data:
                return False
            for message in self._reader.feed(data):
                if message["type"] == "welcome":
                    self.welcome = message
                self._inbox.append(message)
            self._notify()
        return True

    def _notify(self) -> None:
        with self._arrived:
            self._arrived.notify_all()

    def _wake(self) -> None:
        # OSError: the wake-up pipe is full (the thread wakes anyway) or already closed.
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")

    def _run(self) -> None:
        why = "connection closed"
        sock = None
        try:
            if self.server is not None:
                self.port = self.server.wait_port()  # the first line waits for the voice to load
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.settimeout(self.timeout)  # bounds a blocked sendall; reads wait in select
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(encode_frame(self._hello))
            self._sock = sock
            why = self._serve(sock)
        except (OSError, ProtocolError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            with self._lock:  # the game's thread never meets a closed socket (see _now)
                self._sock = None
                if sock is not None:
                    sock.close()
            self.closed = True
            self._inbox.append({"type": "closed", "message": why})
            self._notify()
            self._wake_reader.close()
            self._wake_writer.close()

    def _serve(self, sock: socket.socket) -> str:
        while True:
            readable, _, _ = select.select([sock, self._wake_reader], [], [])
            if self._wake_reader in readable:
                with contextlib.suppress(BlockingIOError):
                    self._wake_reader.recv(4096)
            with self._lock:
                while self._outbox:
                    sock.sendall(self._outbox.popleft())
                if self._closing:
                    return "closed by the game"
                if sock in readable and not self._receive(sock):
                    return "the server closed the connection"


# --- revealing text as it is said ------------------------------------------------------------
# Word marks are [start, length, start_char, end_char]: samples from the line's first sample,
# and the characters of the text sent (Ren'Py markup included) that the word was read from.

_TAG = re.compile(r"\{\{|\{([^{}]*)\}")
"""A Ren'Py text tag, or ``{{`` (a literal brace)."""
SELF_CLOSING_TAGS = frozenset({"w", "p", "nw", "fast", "done", "image", "space", "vspace", "clear"})
"""Ren'Py text tags that take no closing tag (renpy.text.extras.text_tags)."""
HIDE = "{alpha=0}{outlinecolor=#0000}"
"""Makes text, its outlines and drop shadows transparent; ``UNHIDE`` closes it."""
UNHIDE = "{/outlinecolor}{/alpha}"
REVEAL_WAIT = (0.02, 0.1)
"""Bounds of ``Speech.reveal_wait``, in seconds: at most 50 redraws a second, at least 10."""


def revealed_length(text: str, words: list, position: float, complete: bool = True) -> int:
    """How many leading characters of ``text`` the voice has said at ``position``.

    ``words`` are the line's word marks, in order; ``position`` is in samples from the line's
    first sample. The text is said up to the end of the last word whose start has been
    reached, with the punctuation and text tags that follow it ("Halt!{/b}"); all of it once
    the voice is past the end of the last word, if ``complete`` (every mark of the line has
    arrived: until then more words may follow). 0 before the first word.
    """
    said = 0
    for start, _length, _start_char, end_char in words:
        if start > position:
            return said
        said = max(said, _after_word(text, end_char))
    if complete and words and position >= words[-1][0] + words[-1][1]:
        return len(text)
    return said


def _after_word(text: str, end: int) -> int:
    """``end`` moved past the punctuation and text tags that follow a word, up to a space or
    the next word."""
    while end < len(text):
        char = text[end]
        if char == "{" and not text.startswith("{{", end):
            close = text.find("}", end)
            if close < 0:
                break
            end = close + 1
        elif char.isspace() or char.isalnum():
            break
        else:
            end += 2 if text.startswith("{{", end) else 1
    return end


def hide_after(text: str, shown: int, self_closing: object = ()) -> str:
    """Ren'Py text that shows ``text[:shown]`` and lays out the rest invisibly, in its place,
    so that revealing more moves nothing.

    The hidden part is made transparent with ``HIDE`` (outlines and drop shadows too), again
    after each tag that opens in it: a tag that applies a whole style (a hyperlink, ``{=style}``,
    ruby's ``{rt}``) or a color would show its text otherwise. Every tag stays, so the text is
    laid out with the same styles. Tags still open at ``shown`` are closed there and opened
    again in the hidden part, so that tags nest. ``self_closing``: names of custom
    self-closing tags (config.self_closing_custom_text_tags). A ``shown`` inside a tag moves
    past it. Images (``{image}``) cannot be made transparent: they show early.
    """
    closing = SELF_CLOSING_TAGS | frozenset(self_closing)  # type: ignore[arg-type]
    tags = list(_TAG.finditer(text))
    for match in tags:
        if match.start() < shown < match.end():
            shown = match.end()
    if shown >= len(text):
        return text
    opened: list[str] = []
    for match in tags:
        if match.end() > shown:
            break
        kind = _tag_kind(match.group(1), closing)
        if kind == "close" and opened:
            opened.pop()
        elif kind == "open":
            opened.append(match.group(1))

    def hidden_tag(match: re.Match) -> str:
        kind = _tag_kind(match.group(1), closing)
        if kind == "open":
            return match.group(0) + HIDE
        if kind == "close":
            return UNHIDE + match.group(0)
        return match.group(0)

    return (
        text[:shown]
        + "".join(f"{{/{_tag_name(tag)}}}" for tag in reversed(opened))
        + HIDE
        + "".join(f"{{{tag}}}{HIDE}" for tag in opened)
        + _TAG.sub(hidden_tag, text[shown:])  # closes the tags opened again, each with UNHIDE
        + UNHIDE
    )


def _tag_name(tag: str) -> str:
    """The name that closes an open tag: "b" of "b", "color" of "color=#f00", "=emph" of
    "=emph" (a style tag)."""
    return tag if tag.startswith("=") else tag.partition("=")[0]


def _tag_kind(tag: str | None, self_closing: frozenset) -> str:
    """ "open", "close" or "other" (``{{``, a comment, a self-closing tag): what a text tag's
    contents do."""
    if not tag or tag.startswith("#"):
        return "other"
    if tag.startswith("/"):
        return "close"
    return "other" if _tag_name(tag) in self_closing else "open"


# --- Ren'Py-style voicing -----------------------------------------------------------------

Chunk = collections.namedtuple("Chunk", "line seq audio first")
Chunk.__doc__ = """An audio file (.au bytes) to play: ``first`` means play it now, stopping
older audio; otherwise queue it after the line's previous chunk."""


def chunk_filename(line: object, seq: int) -> str:
    """The name a chunk is played under: what renpy.music.get_playing() reports."""
    return f"dialogue_tts/line-{line}-{seq}.au"


MAX_AHEAD_IN_FLIGHT = 4
"""The server runs at most 4 prepare/synthesize requests of a connection at once."""
PREPARED_KEPT = 256
"""How many prepared lines ``Speech`` remembers, so as not to prepare them again (the server
keeps far more: 64 MiB of audio)."""
_LINE_FIELDS = ("voice", "style", "rate", "pitch", "volume", "markup", "text")


def line_request(kind: str, speaker: str, text: str, voice: str | None = None,
                 rate: float | None = None, volume: float | None = None, markup: str = "renpy",
                 style: str | None = None, pitch: float | None = None, reveal: bool = False,
                 ) -> dict:  # fmt: skip
    """A ``say`` or ``prepare`` of a line: both carry the same fields, so that a say of a
    prepared line finds it in the server's cache (same text, markup, voice, style, rate,
    pitch; word timings when its text is revealed by the voice)."""
    request: dict = {"type": kind, "speaker": speaker, "text": text, "markup": markup}
    if reveal:
        request["timings"] = ["word"]
    for name, value in (("voice", voice), ("style", style)):
        if value is not None:
            request[name] = value
    for name, number in (("rate", rate), ("pitch", pitch), ("volume", volume)):
        if number is not None:
            request[name] = float(number)
    return request


def _key(line: dict) -> tuple:
    """What tells lines apart in the local cache and among prepared lines."""
    fields = (line.get(name, "renpy" if name == "markup" else None) for name in _LINE_FIELDS)
    return (line.get("speaker"), line.get("reveal", False), *fields)


class _Line:
    def __init__(self, line: object, speaker: str, key: tuple, text: str = "",
                 reveal: bool = False) -> None:  # fmt: skip
        self.line = line
        self.speaker = speaker
        self.key = key
        self.text = text
        self.sample_rate = 0
        self.pcm = bytearray()  # everything received, for the cache
        self.pending = bytearray()  # received, not yet handed out
        self.chunks = 0
        self.finished = False
        self.stopped = False  # skipped or replaced: drop late audio
        self.words: list | None = [] if reveal else None  # word marks, when asked for
        self.starts: list[int] = []  # the first sample of each chunk handed out
        self.handed = 0  # samples handed out in chunks
        self.said = 0  # revealed_length so far: it never goes back
        self.heard = False  # the voice channel has played some of it
        self.cached = False  # replayed from the cache: no server needed
        self.sent_at: float | None = None  # when the say went out
        self.waited = False  # wait_for_voice has waited for it (once per line)


class Speech:
    """Ren'Py's voice rules over a dialogue-tts connection.

    One line is voiced at a time. ``say`` stops the previous line (skipping it on the server
    when it is still running) and voices the new one; ``skip`` stops the current line;
    ``poll`` returns the audio that arrived as ``Chunk`` files, and ``wait_for_voice`` waits
    a moment for a new line's first audio. Lines heard to the end
    stay in a small cache, so saying one again (a rollback) plays it without the server.

    ``connect()`` must return a started ``Connection``; ``log(message)`` reports trouble,
    once per outage. A missing server makes ``say`` return "offline" and retry later; a server
    that refuses the game (see ``REFUSALS``) makes it return "offline" for good.
    """

    def __init__(self, connect: object, log: object = None, cache_size: int = 32,
                 retry_seconds: float = 10.0, clock: object = None, lookahead: int = 2,
                 hold_seconds: float = 5.0) -> None:  # fmt: skip
        self._connect = connect
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self.cache_size = cache_size
        self.retry_seconds = retry_seconds
        self._clock = clock or time.monotonic
        self.connection: Connection | None = None
        self._last_attempt: float | None = None
        self._reported = False
        # key -> (.au file, sample rate, word marks or None)
        self._cache: collections.OrderedDict[tuple, tuple] = collections.OrderedDict()
        self._current: _Line | None = None
        # The line stopped last, until its finished comes: "complete", it is cached after all.
        self._stopped: _Line | None = None
        self._requests: dict[int, _Line] = {}  # say request id -> line
        self._ready: list[Chunk] = []
        self._next_id = 0
        self._errors_logged: set[str] = set()
        self.lookahead = lookahead
        """How many prepare requests may be in flight at once (4 at most: the server's
        limit)."""
        self.hold_seconds = hold_seconds
        self._ahead: list[dict] = []  # the lines to prepare next, in order
        self._preparing: dict[int, tuple] = {}  # prepare/synthesize request id -> (key, line)
        self._prepared: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self.refused: str | None = None
        """The error code with which the server refused the game, if it did."""

    @property
    def receiving(self) -> bool:
        """True while the current line's audio is still coming from the server."""
        return self._current is not None and not self._current.finished

    def say(self, speaker: str, text: str, voice: str | None = None, rate: float | None = None,
            volume: float | None = None, markup: str = "renpy", style: str | None = None,
            pitch: float | None = None, reveal: bool = False) -> str:  # fmt: skip
        """Voice a line, stopping the previous one. ``style`` names a style of the cast;
        ``pitch`` is 0.5 to 2.0 (1.0 normal); ``reveal`` asks for word marks, for ``reveal()``.
        Returns "cached" (the audio is ready for the next ``poll``), "sent" (asked the
        server) or "offline" (no server, silent)."""
        self.skip()
        key = _key({"speaker": speaker, "text": text, "voice": voice, "rate": rate,
                    "volume": volume, "markup": markup, "style": style, "pitch": pitch,
                    "reveal": reveal})  # fmt: skip
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._next_id += 1
            audio, sample_rate, words = cached
            line = _Line(f"cache-{self._next_id}", speaker, key, text, reveal)
            line.finished = True
            line.cached = True
            line.sample_rate = sample_rate
            line.words = list(words) if reveal and words is not None else None
            line.starts.append(0)
            self._current = line
            self._ready.append(Chunk(line.line, 0, audio, True))
            return "cached"
        connection = self._ensure_connection()
        if connection is None:
            return "offline"
        self._next_id += 1
        line = _Line(self._next_id, speaker, key, text, reveal)
        line.sent_at = self._clock()
        request = line_request("say", speaker, text, voice=voice, rate=rate, volume=volume,
                               markup=markup, style=style, pitch=pitch, reveal=reveal)  # fmt: skip
        request.update(id=self._next_id, line=line.line, interrupt=True, format="s16le")
        if not connection.send(request):
            return "offline"
        self._current = line
        self._requests[self._next_id] = line
        self._send_prepares()  # the line that is said now is no longer ahead
        return "sent"

    def look_ahead(self, lines: list) -> int:
        """Have the server prepare the lines the player will hear next, in that order: each
        a dict of ``say``'s arguments (speaker, text, voice, rate, volume, markup, style,
        pitch, reveal), exactly as ``say`` will get them, so that ``say`` hits the prepared
        line. Replaces the lines asked for before (a jump, a rollback or a load leaves those
        behind). At most ``lookahead`` prepares are in flight: the rest are sent as replies
        come in. Lines in the local cache, or prepared already, are not sent again. Needs a
        connection: before the first ``say``, nothing is sent. Returns how many were sent."""
        self._ahead = [dict(line) for line in lines]
        return self._send_prepares()

    def drop_lookahead(self) -> None:
        """Forget the lines to prepare (skipping): what is in flight finishes on the server,
        which cannot cancel a prepare, and is simply not used."""
        self._ahead = []

    def _send_prepares(self) -> int:
        connection = self.connection
        if connection is None or connection.closed or self.refused is not None:
            return 0
        sent = 0
        in_flight = {key for key, _line in self._preparing.values()}
        current_key = self._current.key if self._current is not None else None
        for line in self._ahead:
            if len(self._preparing) >= min(self.lookahead, MAX_AHEAD_IN_FLIGHT):
                break
            key = _key(line)
            known = key in self._prepared or key in self._cache or key == current_key
            if known or key in in_flight:
                continue
            if not self._request_ahead("prepare", key, line):
                break
            in_flight.add(key)
            sent += 1
        return sent

    def _request_ahead(self, kind: str, key: tuple, line: dict) -> bool:
        """Send a prepare, or a synthesize that fetches a prepared line's audio."""
        assert self.connection is not None
        self._next_id += 1
        request = line_request(kind, **line)
        request["id"] = self._next_id
        if kind == "synthesize":
            request["format"] = "wav"
        if not self.connection.send(request):
            return False
        self._preparing[self._next_id] = (key, line)
        return True

    def _ahead_done(self, key: tuple) -> None:
        self._prepared[key] = None
        while len(self._prepared) > PREPARED_KEPT:
            self._prepared.popitem(last=False)
        self._send_prepares()

    @property
    def holds_voice(self) -> bool:
        """True while the current line's voice is due but not all handed out to play: sent
        and its audio not all come, or come and not yet taken by ``poll``. Auto-forward waits
        for it (for the first audio at most ``hold_seconds``: a stuck server never stops
        the game); once handed out, the voice channel tells whether it plays."""
        line = self._current
        if line is None or line.stopped:
            return False
        if self._ready or line.pending:
            return True
        if line.cached or line.finished or self.connection is None or self.connection.closed:
            return False
        waited = self._clock() - (line.sent_at or 0.0)
        return bool(line.starts) or waited <= self.hold_seconds

    def skip(self) -> bool:
        """Stop the current line; tells the server when it is still running. True if a line
        was stopped."""
        line = self._current
        self._current = None
        if line is None or line.stopped:
            return False
        line.stopped = True
        if not line.finished and self.connection is not None:
            self.connection.send({"type": "skip", "speaker": line.speaker})
            self._stopped = line
        return True

    def wait_for_voice(self, timeout: float) -> float:
        """Wait, at most ``timeout`` seconds, for the first audio of the line being said,
        then return the seconds waited: the game calls it as the line's interaction starts,
        so that a line said live starts playing with its text, as a voice file does, and
        not a frame or more after it (the first frame of a line can take a few hundred
        milliseconds to draw, and nothing else runs meanwhile).

        Waits once per line, and only for a line that is on its way from a server that is
        up: not for a line already playing or handed out (a cached or prepared one), a
        stopped line, a closed connection, or a bundled server still loading its voice."""
        line, connection = self._current, self.connection
        server = getattr(connection, "server", None)
        if (line is None or line.waited or line.cached or line.starts or line.stopped
                or self._ready or connection is None or connection.closed
                or (server is not None and server.starting)):  # fmt: skip
            return 0.0
        line.waited = True
        started = time.monotonic()
        deadline = started + timeout
        while not (line.pending or line.finished or line.stopped or connection.closed):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not connection.wait(remaining):
                break
            self._receive_events()
        return time.monotonic() - started

    def poll(self) -> list[Chunk]:
        """Handle what the server sent; return the audio chunks to play, in order."""
        self._receive_events()
        current = self._current
        if current is not None and current.pending and current.sample_rate and not current.stopped:
            # Everything that arrived since the last poll becomes one file: fewer seams.
            audio = au_bytes(bytes(current.pending), current.sample_rate)
            current.starts.append(current.handed)
            current.handed += len(current.pending) // 2
            current.pending.clear()
            self._ready.append(Chunk(current.line, current.chunks, audio, current.chunks == 0))
            current.chunks += 1
        ready, self._ready = self._ready, []
        return ready

    def _receive_events(self) -> None:
        if self.connection is not None:
            for event in self.connection.poll():
                self._handle(event)

    def reveal(self, text: str, playing: str | None = None, seconds: float | None = None
               ) -> int | None:  # fmt: skip
        """How many leading characters of ``text`` (the dialogue on screen, which holds the
        text of the line said with ``reveal=True``) to show: as far as its voice has said.

        ``playing`` and ``seconds`` are what the voice channel plays and where in it
        (renpy.music.get_playing and get_pos). Before the voice starts, 0. None means show
        all of it: another line, no word marks (a voice without timings), its voice ended, or
        no server has taken the line (not connected yet: the text is never held back for a
        server that is not there). Never less than before for the same line.
        """
        line = self._current
        if line is None or line.words is None or line.stopped or not line.text:
            return None
        if not line.cached and (self.connection is None or self.connection.welcome is None):
            return None
        offset = text.find(line.text)  # the screen may add a what_prefix / what_suffix
        if offset < 0:
            return None
        position = self._position(line, playing, seconds)
        if position is not None:
            line.heard = True
            if not line.words:
                return None  # playing, and no marks came before its audio: none will
            said = revealed_length(line.text, line.words, position, line.finished)
            line.said = max(line.said, said)
        elif line.finished and (line.heard or not line.starts):
            return None  # played out, or ended without audio (an error)
        if line.said >= len(line.text):
            return len(text)
        return offset + line.said

    def reveal_wait(self, playing: str | None = None, seconds: float | None = None) -> float:
        """Seconds until what ``reveal`` shows may change: until the voice reaches its next
        word, within ``REVEAL_WAIT``. Redrawing the text then, rather than every frame,
        keeps it in time at a few redraws a second."""
        shortest, longest = REVEAL_WAIT
        line = self._current
        position = None if line is None else self._position(line, playing, seconds)
        if line is None or position is None or not line.words:
            return longest  # waiting for the voice to start (or for the line to end)
        ends = [start for start, _length, _start_char, _end_char in line.words]
        if line.finished:  # past the last word's end, all of the text shows
            ends.append(line.words[-1][0] + line.words[-1][1])
        for end in ends:
            if end > position:
                return min(max((end - position) / line.sample_rate, shortest), longest)
        return longest

    @staticmethod
    def _position(line: _Line, playing: str | None, seconds: float | None) -> float | None:
        """Samples of ``line`` played, if the voice channel is playing one of its chunks.

        ``seconds`` None with one of them playing is its start: renpy.music.get_pos gives None
        at position 0, and for a file the audio device has not started yet."""
        if not playing or not line.sample_rate:
            return None
        for seq, start in enumerate(line.starts):
            if playing == chunk_filename(line.line, seq):
                return start + (seconds or 0.0) * line.sample_rate
        return None

    def close(self) -> None:
        """Stop the current line and close the connection."""
        self.skip()
        self._reported = True  # closing on purpose is no outage
        if self.connection is not None:
            self.connection.close()

    def _ensure_connection(self) -> Connection | None:
        if self.refused is not None:
            return None
        if self.connection is not None and not self.connection.closed:
            return self.connection
        now = self._clock()
        if self._last_attempt is not None and now - self._last_attempt < self.retry_seconds:
            return None
        self._last_attempt = now
        self.connection = self._connect()  # type: ignore[operator]
        return self.connection

    def _line(self, event: dict) -> _Line | None:
        for line in (self._current, self._stopped):
            if line is not None and event.get("line") == line.line:
                return line
        return None

    def _handle(self, event: dict) -> None:
        kind = event["type"]
        if kind == "welcome":
            self._reported = False
        elif kind == "started":
            line = self._line(event)
            if line is not None:
                line.sample_rate = int(event.get("sample_rate") or 0)
        elif kind == "marks":
            line = self._line(event)
            if line is not None and line.words is not None and not line.stopped:
                line.words += event.get("words") or []
        elif kind == "audio":
            line = self._line(event)
            if line is not None:
                line.pcm += event["data"]  # all of it, for the cache
                if not line.stopped:
                    line.pending += event["data"]  # to play
        elif kind == "finished":
            line = self._line(event)
            if line is not None:
                line.finished = True
                if line is self._stopped:
                    self._stopped = None
                # "complete": all of the line was sent, even if the player moved on before it
                # finished playing; such a line can be replayed from the cache on rollback.
                whole = event.get("status") == "done" or event.get("complete") is True
                samples = len(line.pcm) // 2  # s16le; all of it arrived, or it is not whole
                whole = whole and samples > 0 and samples == event.get("samples", samples)
                if whole and line.sample_rate:
                    audio = au_bytes(bytes(line.pcm), line.sample_rate)
                    self._remember(line.key, (audio, line.sample_rate, line.words))
        elif kind == "prepared":
            ahead = self._preparing.pop(event.get("id"), None)  # type: ignore[arg-type]
            if ahead is None:
                return
            key, line = ahead
            # Fetch its audio from the server's cache: then the line starts from memory as
            # the player reaches it, as a voice file does. A line that reveals its text
            # needs its word marks, which only a say brings: the server's cache serves it.
            if line.get("reveal") or not self._request_ahead("synthesize", key, line):
                self._ahead_done(key)
        elif kind == "audio_file":
            ahead = self._preparing.pop(event.get("id"), None)  # type: ignore[arg-type]
            if ahead is None:
                return
            key, _line = ahead
            found = wav_samples(event.get("data") or b"")
            if found is not None:
                pcm, sample_rate = found
                self._remember(key, (au_bytes(pcm, sample_rate), sample_rate, None))
            self._ahead_done(key)
        elif kind == "error":
            if self._preparing.pop(event.get("id"), None) is not None:  # type: ignore[arg-type]
                self._send_prepares()  # and log it as any error, once
            line = self._requests.pop(event.get("id"), None)  # type: ignore[arg-type]
            if line is not None:
                line.finished = True
            code = event.get("code")
            if code in REFUSALS:  # the server closes next; do not connect again
                self.refused = code
                self._reported = True  # this log line says it all, not "no voice server"
                why = f"{code}: {event.get('message')}"
                self._log(f"dialogue-tts: the server refused the game ({why}); "
                          f"dialogue is silent: {REFUSALS[code]}")  # fmt: skip
                return
            message = f"dialogue-tts: {code}: {event.get('message')}"
            if message not in self._errors_logged:  # e.g. an unknown voice: once, not per line
                self._errors_logged.add(message)
                self._log(message)
        elif kind == "queued":
            self._requests.pop(event.get("id"), None)  # type: ignore[arg-type]
        elif kind == "closed":
            self._requests.clear()
            self._preparing.clear()
            self._prepared.clear()  # a new server has an empty cache
            if self._current is not None:
                self._current.finished = True
            if not self._reported:
                self._reported = True
                where = "?"
                if self.connection is not None:
                    where = f"{self.connection.host}:{self.connection.port}"
                why = event.get("message")
                self._log(f"dialogue-tts: no voice server at {where} ({why}); dialogue is silent")

    def _remember(self, key: tuple, entry: tuple) -> None:
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


# --- a server the game starts ---------------------------------------------------------------

TOKEN_ENV = "DIALOGUE_TTS_TOKEN"
CREATE_NO_WINDOW = 0x08000000
"""Windows' CREATE_NO_WINDOW process creation flag (``subprocess.CREATE_NO_WINDOW``): the
server, a console program, runs without opening a console window."""
_LISTENING = re.compile(r"listening on [^\s:]+:(\d+)")


class ServerProcess:
    """A bundled dialogue-tts server (``dialogue-tts bundle``) that the game starts and stops.

    ``start()`` runs ``path --port 0 --parent-pid <this process>``: the server picks a free
    port, and ends by itself when the game is gone, even after a crash. A fresh random token
    goes to it in its environment (never on its command line, which other users can read),
    so no other local process can use it. A thread reads the port from the server's output
    and passes the rest of it to ``log``; ``wait_port()`` waits for it, ``stop()`` ends it.
    """

    def __init__(self, path: str, log: object = None, start_timeout: float = 120.0) -> None:
        self.path = path
        self.token = secrets.token_urlsafe(32)
        self.start_timeout = start_timeout
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self._log = log or (lambda message: print(message, file=sys.stderr))
        self._listening = threading.Event()
        self._failure = "the server has not been started"

    def start(self, start_thread: object = None) -> ServerProcess:
        """Launch the server, once; ``start_thread`` as in ``Connection.start``."""
        if self.process is not None:
            return self
        command = [self.path, "--port", "0", "--parent-pid", str(os.getpid())]
        flags = CREATE_NO_WINDOW if sys.platform == "win32" else 0
        try:
            self.process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, env={**os.environ, TOKEN_ENV: self.token},
                cwd=os.path.dirname(self.path) or None, creationflags=flags,
            )  # fmt: skip
        except OSError as exc:
            self._failure = f"cannot start {self.path}: {exc}"
            self._listening.set()
            return self
        (start_thread or _daemon_thread)(self._read_output)  # type: ignore[operator]
        return self

    @property
    def starting(self) -> bool:
        """True from ``start()`` until the server listens, or has failed to."""
        return self.process is not None and not self._listening.is_set()

    def wait_port(self) -> int:
        """The port, once the server listens; raises OSError if it failed or took too long."""
        if not self._listening.wait(self.start_timeout):
            raise OSError(f"{self.path} did not start in {self.start_timeout:.0f} s")
        if self.port is None:
            raise OSError(self._failure)
        return self.port

    def stop(self, timeout: float = 2.0) -> None:
        """End the server (it closes its connections) and wait for it, at most ``timeout``."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _read_output(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            found = _LISTENING.search(line) if self.port is None else None
            if found:
                self.port = int(found.group(1))
                self._listening.set()
            elif line:
                self._log(f"dialogue-tts server: {line}")
        status = process.wait()
        self._failure = f"{self.path} exited (status {status}) before it listened"
        self._listening.set()


# --- looking ahead in the script ------------------------------------------------------------
# Ren'Py's script is a graph of statements (renpy.ast nodes) linked by .next. The walk below
# reads it by class name and attributes only, so it runs (and is tested) without Ren'Py.

PASS_THROUGH = frozenset({
    "Label", "Pass", "Show", "Scene", "Hide", "With", "ShowLayer", "Camera", "EndTranslate",
    "Translate",
})  # fmt: skip
"""Statements that cannot change what the next line says or who says it."""
PASS_THROUGH_STATEMENTS = frozenset({
    "play", "queue", "stop", "pause", "window", "nvl", "show", "hide", "scene",
})  # fmt: skip
"""User statements (by their first word) that cannot change the next line: music, sound,
pauses, the window, screens shown and hidden. Others (``voice``, ``call screen``, ...) end
the walk."""


def walk_ahead(start: object, lookup: object, count: int = 2, branches: int = 3,
               max_steps: int = 500) -> list:  # fmt: skip
    """The say statements the player can reach next from the statement ``start``, nearest
    first: ``count`` of them along the path, and where the path forks (a ``menu``, an ``if``)
    the first line of each branch, ``branches`` at most, after which the walk ends.

    Returns ``(say node, translate identifier or None)`` pairs. ``lookup(label)`` gives a
    label's statement (``renpy.game.script.lookup``), or raises. The walk follows jumps and
    calls to a named label (and the returns of those calls), and stops where it cannot know
    where the game goes or what a line will say: Python, ``while``, jumps and calls to an
    expression, calls with arguments, a ``return`` it did not walk into, a ``voice`` statement
    and any other statement it does not know. ``max_steps`` bounds the walk (a loop of
    statements without a line).
    """
    found: list = []
    steps = [max_steps]
    node, identifier, stack = start, None, []
    while len(found) < count:
        node, identifier, forks = _walk_to_line(node, identifier, stack, lookup, steps)
        if forks is not None:
            for fork in forks[:branches]:
                first = _walk_to_line(fork, identifier, list(stack), lookup, steps)
                if first[0] is not None and first[2] is None:
                    found.append((first[0], first[1]))
            break
        if node is None:
            break
        found.append((node, identifier))
        node = node.next
    return found


def _walk_to_line(node: object, identifier: object, stack: list, lookup: object,
                  steps: list) -> tuple:  # fmt: skip
    """From ``node`` to the next say statement: ``(say, identifier, None)``; at a fork,
    ``(None, identifier, [first statement of each branch])``; ``(None, ...)`` where the walk
    must stop. ``stack`` holds the statements that calls walked into return to."""
    while node is not None and steps[0] > 0:
        steps[0] -= 1
        kind = type(node).__name__
        if kind == "Say":
            return node, identifier, None
        if kind == "Translate":
            if getattr(node, "language", None) is not None:
                return None, identifier, None  # a translation's own block: not in the flow
            identifier = node.identifier
        if kind in PASS_THROUGH:
            node = node.next
        elif kind == "UserStatement":
            name = _statement_name(node)
            if name.split(" ", 1)[0] not in PASS_THROUGH_STATEMENTS or name == "call screen":
                return None, identifier, None
            node = node.next
        elif kind == "Jump" and not node.expression:
            node = _lookup(lookup, node.target)
        elif kind == "Call" and not node.expression and node.arguments is None:
            stack.append(node.next)
            node = _lookup(lookup, node.label)
        elif kind == "Return" and stack:
            node = stack.pop()
        elif kind == "Menu":
            return None, identifier, [block[0] for _label, _cond, block in node.items if block]
        elif kind == "If":
            forks = [block[0] for _condition, block in node.entries if block]
            if not node.entries or node.entries[-1][0] != "True":
                forks.append(node.next)  # no else: falls through when nothing is true
            return None, identifier, forks
        else:
            return None, identifier, None
    return None, identifier, None


def _statement_name(node: object) -> str:
    try:
        return str(node.get_name())  # type: ignore[attr-defined]
    except Exception:
        return ""


def _lookup(lookup: object, label: object) -> object:
    try:
        return lookup(label)  # type: ignore[operator]
    except Exception:  # Ren'Py raises ScriptError for a missing label
        return None
