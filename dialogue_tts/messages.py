"""Wire messages: one frozen dataclass per message type, in each direction.

Each class declares ``TYPE`` (its wire name) and its fields with type hints; ``from_dict``
validates a decoded msgpack map against those hints, so a class is nothing but its fields.
Requests go client -> server (``REQUEST_TYPES``); events and replies go server -> client
(``EVENT_TYPES``). "voices" and "status" are both a request and its reply, hence two tables.

Unknown keys are ignored so that newer peers can add optional fields. ``None`` fields are
left out of the encoded map, except those listed in a class's ``KEEP_NONE``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import Any, ClassVar, Literal, Self, Union

from . import errors

__all__ = [
    "EVENT_TYPES",
    "PROTOCOL_VERSION",
    "REQUEST_TYPES",
    "Audio",
    "AudioFile",
    "Bye",
    "Cancel",
    "Cancelled",
    "CastReport",
    "CastRequest",
    "Clear",
    "Cleared",
    "Error",
    "Event",
    "Finished",
    "Hello",
    "InvalidMessage",
    "LineId",
    "Marks",
    "Message",
    "Pause",
    "Paused",
    "Ping",
    "Pong",
    "Prepare",
    "Prepared",
    "Pronounce",
    "Pronunciation",
    "Queued",
    "Request",
    "Resume",
    "Resumed",
    "Say",
    "SceneLine",
    "Skip",
    "Skipped",
    "Started",
    "StatusReport",
    "StatusRequest",
    "Synthesize",
    "SynthesizeScene",
    "TextRequest",
    "VoiceList",
    "VoicesRequest",
    "Welcome",
]

PROTOCOL_VERSION: typing.Final = 1
MAX_NAME_CHARS: typing.Final = 256
"""Longest speaker name, voice name, line id string or client name."""
SAMPLE_RATE_RANGE: typing.Final = (8000, 96000)
MAX_SCENE_LINES: typing.Final = 200
"""Lines of one synthesize_scene; checked before any line is validated, so that a frame of
tiny lines costs no time."""
MAX_SCENE_PAUSE: typing.Final = 30.0
MAX_LINE_LEXICON: typing.Final = 64
"""Entries in one request's own ``lexicon``."""
"""Longest gap or pause, in seconds, in a synthesize_scene."""

LineId = int | str
StreamFormat = Literal["s16le", "f32le", "wav"]
FileFormat = Literal["wav", "ogg", "flac", "f32le", "s16le"]
"""A whole line's format: a file, or raw mono PCM without a header (an engine that
holds a line's samples, such as the Godot addon, decodes f32le in one call)."""
Markup = Literal["plain", "renpy", "bbcode"]
FinishStatus = Literal["done", "skipped", "cancelled", "error"]
TIMINGS: typing.Final = ("word", "phoneme", "viseme")
"""What a client may ask "marks" events for."""


class InvalidMessage(ValueError):
    """A decoded map does not form a valid message; ``code`` is the wire error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _bounded(max_chars: int = MAX_NAME_CHARS) -> dict[str, int]:
    return {"max_chars": max_chars}


@dataclass(frozen=True, kw_only=True)
class Message:
    """Base of every wire message."""

    TYPE: ClassVar[str] = ""
    KEEP_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """The msgpack map for this message, "type" first."""
        data: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None or f.name in self.KEEP_NONE:
                data[f.name] = value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Validate a decoded map and build the message; raises ``InvalidMessage``."""
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            # A nil field is the same as an absent one (PROTOCOL.md), except where nil means
            # something of its own (KEEP_NONE).
            if f.name not in data or (data[f.name] is None and f.name not in cls.KEEP_NONE):
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise InvalidMessage(errors.INVALID_FIELD, f"{cls.TYPE}.{f.name}: missing")
                continue
            hint = _field_hints(cls)[f.name]
            value = _check_value(f"{cls.TYPE}.{f.name}", data[f.name], hint)
            max_chars = f.metadata.get("max_chars")
            if max_chars is not None and isinstance(value, str) and len(value) > max_chars:
                raise InvalidMessage(
                    errors.INVALID_FIELD,
                    f"{cls.TYPE}.{f.name}: longer than {max_chars} characters",
                )
            kwargs[f.name] = value
        message = cls(**kwargs)
        message.check()
        return message

    def check(self) -> None:
        """Checks beyond field types; raises ``InvalidMessage``. Override where needed."""


@dataclass(frozen=True, kw_only=True)
class Request(Message):
    """A client -> server message. The reply, and any error about it, echo ``id``."""

    id: int | str | None = field(default=None, metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class Event(Message):
    """A server -> client message."""


# --- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Hello(Request):
    """First frame of every connection."""

    TYPE: ClassVar[str] = "hello"
    protocol: int
    client: str = field(metadata=_bounded())
    pace: bool = True
    """False: a line finishes as soon as its audio is sent, not when it would have played."""
    token: str | None = field(default=None, metadata=_bounded(), repr=False)
    """The server's shared secret, when it is started with one."""
    cast: dict[str, Any] | str | None = None
    """This connection's cast (a map shaped like the cast file, or its TOML text); it
    replaces the server's cast for this connection."""
    timings: list[str] | None = None
    """Marks every say of the connection gets unless it says otherwise (see ``Say.timings``)."""

    def check(self) -> None:
        _check_timings(self)


@dataclass(frozen=True, kw_only=True)
class TextRequest(Request):
    """A request that carries a line to synthesize: say, synthesize and prepare."""

    text: str
    speaker: str | None = field(default=None, metadata=_bounded())
    """Whose line it is: picks the speaker's cast entry (voice, rate, pitch, styles)."""
    voice: str | None = field(default=None, metadata=_bounded())
    """Overrides the cast's voice for this line."""
    style: str | None = field(default=None, metadata=_bounded())
    """A named style of the cast ("angry", "whisper"...)."""
    markup: Markup = "plain"
    rate: float = 1.0
    """Speaking-rate multiplier: 2.0 is twice as fast (multiplies the cast's rate)."""
    pitch: float = 1.0
    """Pitch multiplier with the duration kept: 1.2 is higher (multiplies the cast's pitch)."""
    volume: float = 1.0
    """Linear gain; samples are clipped, never wrapped (multiplies the cast's volume)."""
    sample_rate: int | None = None
    """Resample the audio to this rate (Hz); default: the voice's own rate."""
    lexicon: dict[str, str] | None = None
    """Lexicon entries for this line only, winning over the cast's (word -> respelling or
    /phonemes/): a writer trying a pronunciation before putting it in the cast."""

    def check(self) -> None:
        _check_line(self)
        if self.lexicon is not None and len(self.lexicon) > MAX_LINE_LEXICON:
            raise InvalidMessage(
                errors.INVALID_FIELD,
                f"{self.TYPE}.lexicon: at most {MAX_LINE_LEXICON} entries",
            )
        low, high = SAMPLE_RATE_RANGE
        if self.sample_rate is not None and not low <= self.sample_rate <= high:
            raise InvalidMessage(
                errors.INVALID_FIELD, f"{self.TYPE}.sample_rate: must be {low} to {high}"
            )


def _check_line(line: TextRequest | SceneLine) -> None:
    """The checks a line's own settings need, in a request or in a scene."""
    for name, low, high in (("rate", 0.1, 10.0), ("pitch", 0.5, 2.0), ("volume", 0.0, 10.0)):
        if not low <= getattr(line, name) <= high:
            raise InvalidMessage(
                errors.INVALID_FIELD, f"{line.TYPE}.{name}: must be {low:g} to {high:g}"
            )
    if not line.text.strip():
        raise InvalidMessage(errors.EMPTY_TEXT, f"{line.TYPE}.text: empty or only whitespace")


@dataclass(frozen=True, kw_only=True)
class Say(TextRequest):
    """Queue a line for a speaker."""

    TYPE: ClassVar[str] = "say"
    speaker: str = field(metadata=_bounded())
    line: LineId | None = field(default=None, metadata=_bounded())
    interrupt: bool = False
    format: StreamFormat = "s16le"
    timings: list[str] | None = None
    """Ask for "marks" events: any of "word", "phoneme", "viseme"; None: the hello's."""

    def check(self) -> None:
        super().check()
        _check_timings(self)


@dataclass(frozen=True, kw_only=True)
class Skip(Request):
    """End the speaker's current line at once and start its next one."""

    TYPE: ClassVar[str] = "skip"
    speaker: str = field(metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class Cancel(Request):
    """Cancel one line, queued or current."""

    TYPE: ClassVar[str] = "cancel"
    line: LineId = field(metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class Clear(Request):
    """Cancel the current and queued lines of one speaker, or of all when speaker is absent."""

    TYPE: ClassVar[str] = "clear"
    speaker: str | None = field(default=None, metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class Pause(Request):
    """Stop sending audio and stop the line clock, for one speaker or all."""

    TYPE: ClassVar[str] = "pause"
    speaker: str | None = field(default=None, metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class Resume(Request):
    """Undo pause, for one speaker or all."""

    TYPE: ClassVar[str] = "resume"
    speaker: str | None = field(default=None, metadata=_bounded())


@dataclass(frozen=True, kw_only=True)
class VoicesRequest(Request):
    """Ask for the voice list."""

    TYPE: ClassVar[str] = "voices"


@dataclass(frozen=True, kw_only=True)
class CastRequest(Request):
    """Ask for this connection's cast."""

    TYPE: ClassVar[str] = "cast"


@dataclass(frozen=True, kw_only=True)
class StatusRequest(Request):
    """Ask for the state of this connection's speakers."""

    TYPE: ClassVar[str] = "status"


@dataclass(frozen=True, kw_only=True)
class Synthesize(TextRequest):
    """Render a whole line to one audio file, outside any queue."""

    TYPE: ClassVar[str] = "synthesize"
    format: FileFormat = "wav"


@dataclass(frozen=True, kw_only=True)
class Prepare(TextRequest):
    """Synthesize a line that will be said soon into the server's cache, without playing it.

    Its volume is accepted but does not matter: gain is applied after the cache."""

    TYPE: ClassVar[str] = "prepare"
    timings: list[str] | None = None
    """With "word", the line is prepared with its word marks, so that a say that asks for
    them hits it; None: the hello's. Phonemes and visemes always come with a line."""

    def check(self) -> None:
        super().check()
        _check_timings(self)


@dataclass(frozen=True, kw_only=True)
class Pronounce(TextRequest):
    """Which words of a line the lexicon changes, and into what; nothing is synthesized.

    Its delivery fields (rate, pitch, volume, sample_rate) are accepted and do not matter."""

    TYPE: ClassVar[str] = "pronounce"


@dataclass(frozen=True, kw_only=True)
class SceneLine(Message):
    """One line of a ``synthesize_scene``: a map in its ``lines``, not a message of its own
    (so its ``TYPE`` is empty, and its errors read ``synthesize_scene.lines[3].rate: ...``)."""

    speaker: str = field(metadata=_bounded())
    text: str
    style: str | None = field(default=None, metadata=_bounded())
    voice: str | None = field(default=None, metadata=_bounded())
    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0
    pause: float = 0.0
    """Seconds of silence before this line, on top of the gap."""

    def check(self) -> None:
        _check_line(self)
        if not 0.0 <= self.pause <= MAX_SCENE_PAUSE:
            raise InvalidMessage(
                errors.INVALID_FIELD, f"{self.TYPE}.pause: must be 0 to {MAX_SCENE_PAUSE:g}"
            )


@dataclass(frozen=True, kw_only=True)
class SynthesizeScene(Request):
    """Render several lines as one file, joined with natural gaps (a whole scene)."""

    TYPE: ClassVar[str] = "synthesize_scene"
    lines: list[dict[str, Any]]
    """``SceneLine`` maps, in order."""
    format: FileFormat = "wav"
    gap: float | None = None
    """Seconds between lines; default 0.45 between speakers and 0.25 within one."""
    markup: Markup = "plain"

    def check(self) -> None:
        if not self.lines:
            raise InvalidMessage(errors.EMPTY_TEXT, f"{self.TYPE}.lines: no lines")
        if len(self.lines) > MAX_SCENE_LINES:
            raise InvalidMessage(
                errors.INVALID_FIELD,
                f"{self.TYPE}.lines: {len(self.lines)} lines; at most {MAX_SCENE_LINES}",
            )
        if self.gap is not None and not 0.0 <= self.gap <= MAX_SCENE_PAUSE:
            raise InvalidMessage(
                errors.INVALID_FIELD, f"{self.TYPE}.gap: must be 0 to {MAX_SCENE_PAUSE:g}"
            )
        self.scene_lines()

    def scene_lines(self) -> list[SceneLine]:
        """The lines, validated; raises ``InvalidMessage`` naming the line's index."""
        lines = []
        for index, entry in enumerate(self.lines):
            where = f"{self.TYPE}.lines[{index}]"
            if not isinstance(entry, dict):
                raise InvalidMessage(
                    errors.INVALID_FIELD, f"{where}: expected a map, got {type(entry).__name__}"
                )
            try:
                lines.append(SceneLine.from_dict(entry))
            except InvalidMessage as exc:  # ".rate: must be..." -> "...lines[3].rate: must be..."
                raise InvalidMessage(exc.code, f"{where}{exc}") from None
        return lines


@dataclass(frozen=True, kw_only=True)
class Ping(Request):
    TYPE: ClassVar[str] = "ping"


@dataclass(frozen=True, kw_only=True)
class Bye(Request):
    """The server cancels this connection's lines and closes it."""

    TYPE: ClassVar[str] = "bye"


# --- events and replies -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Welcome(Event):
    TYPE: ClassVar[str] = "welcome"
    id: int | str | None = None
    protocol: int
    server: str
    voices: list[dict[str, Any]]
    default_voice: str
    max_frame: int
    max_text: int


@dataclass(frozen=True, kw_only=True)
class Queued(Event):
    TYPE: ClassVar[str] = "queued"
    id: int | str | None = None
    line: LineId
    speaker: str
    position: int
    """Lines ahead of this one for its speaker, counting the current line."""


@dataclass(frozen=True, kw_only=True)
class Started(Event):
    TYPE: ClassVar[str] = "started"
    line: LineId
    speaker: str
    voice: str
    sample_rate: int
    channels: int = 1
    format: StreamFormat


@dataclass(frozen=True, kw_only=True)
class Audio(Event):
    TYPE: ClassVar[str] = "audio"
    line: LineId
    speaker: str
    seq: int
    data: bytes


@dataclass(frozen=True, kw_only=True)
class Marks(Event):
    """What is said when in the audio that follows: sent before the audio events that carry
    the samples it describes. Positions are samples from the line's first sample."""

    TYPE: ClassVar[str] = "marks"
    line: LineId
    speaker: str
    words: list[list[int]] | None = None
    """[start, length, start_char, end_char]: the word is text[start_char:end_char] of the
    text the client sent."""
    phonemes: list[list[Any]] | None = None
    """[start, length, phoneme] (espeak IPA)."""
    visemes: list[list[Any]] | None = None
    """[start, length, viseme]: a mouth shape of ``timings.VISEMES``."""


@dataclass(frozen=True, kw_only=True)
class Finished(Event):
    TYPE: ClassVar[str] = "finished"
    line: LineId
    speaker: str
    status: FinishStatus
    samples: int
    """Samples actually sent for this line."""
    complete: bool = False
    """Every sample of the line had been sent (true for "done"; may be true for "skipped")."""
    message: str | None = None


@dataclass(frozen=True, kw_only=True)
class Skipped(Event):
    TYPE: ClassVar[str] = "skipped"
    KEEP_NONE: ClassVar[frozenset[str]] = frozenset({"line"})
    id: int | str | None = None
    speaker: str
    line: LineId | None
    """The line that was skipped, or nil when the speaker had no current line."""


@dataclass(frozen=True, kw_only=True)
class Cancelled(Event):
    TYPE: ClassVar[str] = "cancelled"
    id: int | str | None = None
    line: LineId


@dataclass(frozen=True, kw_only=True)
class Cleared(Event):
    TYPE: ClassVar[str] = "cleared"
    id: int | str | None = None
    speaker: str | None = None
    lines: list[LineId]
    """The lines that were cancelled, current one first."""


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    TYPE: ClassVar[str] = "paused"
    id: int | str | None = None
    speaker: str | None = None


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    TYPE: ClassVar[str] = "resumed"
    id: int | str | None = None
    speaker: str | None = None


@dataclass(frozen=True, kw_only=True)
class VoiceList(Event):
    TYPE: ClassVar[str] = "voices"
    id: int | str | None = None
    voices: list[dict[str, Any]]


@dataclass(frozen=True, kw_only=True)
class CastReport(Event):
    TYPE: ClassVar[str] = "cast"
    id: int | str | None = None
    cast: dict[str, Any]
    """The cast in the shape of the cast file, plus "source" (where it came from)."""


@dataclass(frozen=True, kw_only=True)
class Pronunciation(Event):
    """The reply to ``pronounce``."""

    TYPE: ClassVar[str] = "pronunciation"
    id: int | str | None = None
    voice: str
    words: list[list[Any]]
    """``[start_char, end_char, phonemes, entry]`` for each word the lexicon changed: its
    characters in the text as sent, the phonemes the voice is given, the lexicon's value."""


@dataclass(frozen=True, kw_only=True)
class StatusReport(Event):
    TYPE: ClassVar[str] = "status"
    id: int | str | None = None
    speakers: dict[str, Any]
    cache: dict[str, Any] | None = None
    """Cache counters: {"memory": {hits, misses, entries, bytes}, "disk": {...}}."""
    underruns: dict[str, Any] | None = None
    """This connection's playback gaps so far: {"count": int, "seconds": float}."""


@dataclass(frozen=True, kw_only=True)
class AudioFile(Event):
    TYPE: ClassVar[str] = "audio_file"
    id: int | str | None = None
    format: FileFormat
    data: bytes
    duration: float
    """Seconds."""
    sample_rate: int


@dataclass(frozen=True, kw_only=True)
class Prepared(Event):
    TYPE: ClassVar[str] = "prepared"
    id: int | str | None = None
    duration: float
    """Seconds of audio now ready for a say with the same text, voice and rate."""


@dataclass(frozen=True, kw_only=True)
class Pong(Event):
    TYPE: ClassVar[str] = "pong"
    id: int | str | None = None


@dataclass(frozen=True, kw_only=True)
class Error(Event):
    TYPE: ClassVar[str] = "error"
    id: int | str | None = None
    code: str
    message: str


REQUEST_TYPES: typing.Final[dict[str, type[Request]]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Say, Skip, Cancel, Clear, Pause, Resume, VoicesRequest, CastRequest,
        StatusRequest, Synthesize, SynthesizeScene, Prepare, Pronounce, Ping, Bye,
    )
}  # fmt: skip
EVENT_TYPES: typing.Final[dict[str, type[Event]]] = {
    cls.TYPE: cls
    for cls in (
        Welcome, Queued, Started, Audio, Marks, Finished, Skipped, Cancelled, Cleared, Paused,
        Resumed, VoiceList, CastReport, Pronunciation, StatusReport, AudioFile, Prepared, Pong,
        Error,
    )
}  # fmt: skip


def _check_timings(message: Hello | Say | Prepare) -> None:
    timings = message.timings
    if timings is not None and not all(isinstance(t, str) and t in TIMINGS for t in timings):
        raise InvalidMessage(
            errors.INVALID_FIELD,
            f"{message.TYPE}.timings: a list of {', '.join(repr(t) for t in TIMINGS)}",
        )


# --- validation from type hints ---------------------------------------------------------


@cache
def _field_hints(cls: type[Message]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(name: str, value: Any, hint: Any) -> Any:
    """Return ``value`` (floats normalised) if it fits ``hint``, else raise InvalidMessage."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_value(name, value, option)
            except InvalidMessage:
                continue
        raise _type_error(name, value, hint)
    if origin is Literal:
        if isinstance(value, str) and value in typing.get_args(hint):
            return value
        raise _type_error(name, value, hint)
    if hint is type(None):
        if value is None:
            return None
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is bytes:
        if isinstance(value, bytes | bytearray):
            return bytes(value)
    elif origin is list:
        if isinstance(value, list):
            return value
    elif origin is dict:
        if isinstance(value, dict):
            return value
    elif hint is Any:
        return value
    raise _type_error(name, value, hint)


def _type_error(name: str, value: Any, hint: Any) -> InvalidMessage:
    return InvalidMessage(
        errors.INVALID_FIELD, f"{name}: expected {_describe(hint)}, got {type(value).__name__}"
    )


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(choice) for choice in typing.get_args(hint))
    if hint is type(None):
        return "nil"
    if origin is not None:
        return origin.__name__
    return {str: "string", int: "integer", float: "number", bytes: "binary"}.get(
        hint, getattr(hint, "__name__", str(hint))
    )
