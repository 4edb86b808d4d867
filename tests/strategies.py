"""Hypothesis strategies for dialogue-tts frames and messages.

Shared by ``tests/test_fuzz.py`` and the long fuzz command ``benchmarks/fuzz.py``. Valid
messages are derived from each message class's type hints, so a field added to
``messages.py`` is generated without a change here; ``NARROWER_VALUES`` pins the fields whose
valid values are narrower than their type (the ranges of PROTOCOL.md), and every generated
request still goes through its own ``check()``, so a new constraint is never violated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, Literal, Union

import msgpack
from hypothesis import strategies as st

from dialogue_tts.messages import (
    EVENT_TYPES,
    PROTOCOL_VERSION,
    REQUEST_TYPES,
    Hello,
    InvalidMessage,
    Message,
    Request,
    SceneLine,
    SynthesizeScene,
)
from dialogue_tts.protocol import HEADER_SIZE, encode_frame

__all__ = [
    "HELLO",
    "HELLO_FRAME",
    "NARROWER_VALUES",
    "byte_streams",
    "event_frames",
    "event_streams",
    "fits",
    "frame",
    "hints",
    "messages",
    "msgpack_values",
    "request_frames",
    "request_streams",
    "valid_events",
    "valid_requests",
    "wrong_values",
]

MSGPACK_INT = st.integers(-(2**63), 2**64 - 1)
"""Every integer msgpack can carry."""
SHORT_TEXT = st.text(max_size=24)

# Anything msgpack can carry, for fields of type Any and for wrong values. NaN and infinities
# are included: they are wrong for every float field.
msgpack_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | MSGPACK_INT | st.floats() | SHORT_TEXT | st.binary(max_size=24),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(SHORT_TEXT, children, max_size=4)
    ),
    max_leaves=10,
)


def _scene_line_maps() -> st.SearchStrategy[dict[str, Any]]:
    """Valid entries of synthesize_scene's ``lines``: SceneLine maps (they have no type)."""
    return messages(SceneLine).map(
        lambda line: {k: v for k, v in line.to_dict().items() if k != "type"}
    )


NARROWER_VALUES: dict[tuple[type[Message], str], st.SearchStrategy[Any]] = {
    (Hello, "protocol"): st.just(PROTOCOL_VERSION),
    (Message, "text"): st.text(min_size=1, max_size=80).filter(str.strip),
    (Message, "rate"): st.floats(0.1, 10.0),
    (Message, "pitch"): st.floats(0.5, 2.0),
    (Message, "volume"): st.floats(0.0, 10.0),
    (Message, "pause"): st.floats(0.0, 30.0),
    (Message, "gap"): st.floats(0.0, 30.0),
    (Request, "sample_rate"): st.integers(8000, 96000),
    (SynthesizeScene, "lines"): st.deferred(
        lambda: st.lists(_scene_line_maps(), min_size=1, max_size=3)
    ),
}
"""Valid values of fields that accept less than their type, for the class and its subclasses
(nil is added where the field may be nil)."""


def hints(cls: type[Message]) -> dict[str, Any]:
    """The type hint of each wire field of ``cls``."""
    resolved = typing.get_type_hints(cls)
    return {f.name: resolved[f.name] for f in dataclasses.fields(cls)}


def _max_chars(cls: type[Message], name: str) -> int | None:
    return next(f for f in dataclasses.fields(cls) if f.name == name).metadata.get("max_chars")


def _values_of(hint: Any, max_chars: int | None = None) -> st.SearchStrategy[Any]:
    """Values of type ``hint`` that survive a msgpack round trip unchanged."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return st.one_of(*(_values_of(option, max_chars) for option in typing.get_args(hint)))
    if origin is Literal:
        return st.sampled_from(typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint)
        return st.lists(_values_of(item), max_size=4)
    if origin is dict:
        _, value = typing.get_args(hint)
        return st.dictionaries(SHORT_TEXT, _values_of(value), max_size=4)
    if hint is str and max_chars is not None:
        # Short names mostly, and the longest allowed one now and then.
        return SHORT_TEXT | st.text(min_size=max_chars, max_size=max_chars)
    simple: dict[Any, st.SearchStrategy[Any]] = {
        type(None): st.none(),
        bool: st.booleans(),
        int: MSGPACK_INT,
        float: st.floats(allow_nan=False, allow_infinity=False),
        str: st.text(max_size=80),
        bytes: st.binary(max_size=64),
        Any: msgpack_values.filter(_is_stable),
    }
    return simple[hint]


def _is_stable(value: Any) -> bool:
    """False for values a round trip changes (NaN is not equal to itself)."""
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, list):
        return all(_is_stable(item) for item in value)
    if isinstance(value, dict):
        return all(_is_stable(item) for item in value.values())
    return True


def _narrower(cls: type[Message], name: str) -> st.SearchStrategy[Any] | None:
    for (base, field_name), values in NARROWER_VALUES.items():
        if field_name == name and issubclass(cls, base):
            return st.none() | values if fits(None, hints(cls)[name]) else values
    return None


def _passes_check(message: Message) -> bool:
    try:
        message.check()
    except InvalidMessage:
        return False
    return True


@cache
def messages(cls: type[Message]) -> st.SearchStrategy[Message]:
    """Valid messages of one class: required fields always, optional ones sometimes."""
    fields: dict[str, st.SearchStrategy[Any]] = {}
    optional: list[str] = []
    for f in dataclasses.fields(cls):
        values = _narrower(cls, f.name)
        if values is None:
            values = _values_of(hints(cls)[f.name], _max_chars(cls, f.name))
        fields[f.name] = values
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            optional.append(f.name)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        chosen = draw(st.sets(st.sampled_from(optional))) if optional else set()
        kwargs = {
            name: draw(values)
            for name, values in fields.items()
            if name not in optional or name in chosen
        }
        return cls(**kwargs)

    return build().filter(_passes_check)


valid_requests = st.sampled_from(sorted(REQUEST_TYPES.values(), key=lambda c: c.TYPE)).flatmap(
    messages
)
valid_events = st.sampled_from(sorted(EVENT_TYPES.values(), key=lambda c: c.TYPE)).flatmap(messages)
HELLO = Hello(protocol=PROTOCOL_VERSION, client="fuzz")
HELLO_FRAME = encode_frame(HELLO)


def frame(payload: bytes) -> bytes:
    """A frame around any payload (no check of its size)."""
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


request_frames = valid_requests.filter(lambda m: not isinstance(m, Hello)).map(encode_frame)
"""Frames of valid requests other than hello."""
event_frames = valid_events.map(encode_frame)


def request_streams() -> st.SearchStrategy[list[Message]]:
    """What a valid client sends: a hello, then any other requests."""
    return st.lists(valid_requests.filter(lambda m: not isinstance(m, Hello)), max_size=8).map(
        lambda requests: [HELLO, *requests]
    )


def event_streams() -> st.SearchStrategy[list[Message]]:
    """What a server sends: any events."""
    return st.lists(valid_events, min_size=1, max_size=8)


def _random_maps() -> st.SearchStrategy[dict[Any, Any]]:
    """Maps that look like messages: a known or unknown type, known field names, any values."""
    field_names = sorted(
        {name for cls in (*REQUEST_TYPES.values(), *EVENT_TYPES.values()) for name in hints(cls)}
    )
    known_types = sorted({*REQUEST_TYPES, *EVENT_TYPES})
    return st.fixed_dictionaries(
        {"type": st.sampled_from(known_types) | msgpack_values},
        optional={name: msgpack_values for name in field_names},
    ) | st.dictionaries(
        msgpack_values.filter(lambda key: not isinstance(key, list | dict)),  # any hashable
        msgpack_values,
        max_size=4,
    )


def _frame_pieces(valid_frames: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    packed = st.one_of(msgpack_values, _random_maps()).map(
        lambda value: msgpack.packb(value, use_bin_type=True)
    )
    return st.one_of(
        valid_frames,
        valid_frames.flatmap(lambda f: st.integers(1, len(f) - 1).map(lambda cut: f[:cut])),
        packed.map(frame),
        st.binary(max_size=64).map(frame),  # well delimited, anything inside
        st.binary(max_size=64),  # not even delimited
        st.integers(0, 2**32 - 1).map(lambda n: n.to_bytes(HEADER_SIZE, "big")),  # a bare header
    )


def byte_streams(
    valid_frames: st.SearchStrategy[bytes] = request_frames,
) -> st.SearchStrategy[bytes]:
    """Valid frames, truncated frames, random msgpack and plain garbage, back to back."""
    return st.lists(_frame_pieces(valid_frames), max_size=8).map(b"".join)


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` has the wire type ``hint`` (PROTOCOL.md: an int is never a float
    or a bool, a float field takes any finite number, bin is never a str)."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, option) for option in typing.get_args(hint))
    if origin is Literal:
        return isinstance(value, str) and value in typing.get_args(hint)
    if origin is not None:
        return isinstance(value, origin)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return (
            isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        )
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def wrong_values(hint: Any) -> st.SearchStrategy[Any]:
    """Non-nil values that are not of type ``hint`` (nil means absent; see test_fuzz)."""
    return msgpack_values.filter(lambda value: value is not None and not fits(value, hint))
