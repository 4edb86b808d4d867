"""Property tests of the frame and message layer on generated input, and garbage over a socket.

The pure properties (``PURE_PROPERTIES``: ``test_frame_decoder_*``, ``test_connection_*``,
``test_valid_*``, ``test_wrong_*``, ``test_any_request_map_*``) are also what
``benchmarks/fuzz.py`` runs for minutes; here each runs a modest number of examples so the
suite stays quick. test_protocol.py holds the protocol's vectors and edge cases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import socket
from typing import Any

import msgpack
import pytest
from helpers import ServerThread
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from strategies import (
    HELLO_FRAME,
    byte_streams,
    event_frames,
    event_streams,
    fits,
    frame,
    hints,
    messages,
    msgpack_values,
    request_streams,
    valid_events,
    valid_requests,
    wrong_values,
)

from dialogue_tts import errors
from dialogue_tts.errors import RemoteProtocolError
from dialogue_tts.messages import (
    EVENT_TYPES,
    REQUEST_TYPES,
    Error,
    Event,
    Finished,
    Hello,
    Message,
    Ping,
    Pong,
    Request,
)
from dialogue_tts.protocol import (
    CLOSED,
    HEADER_SIZE,
    NEED_DATA,
    Connection,
    FrameDecoder,
    Role,
    encode_frame,
)

PROTOCOL_CODES = frozenset({
    errors.FRAME_TOO_LARGE, errors.INVALID_FRAME, errors.INVALID_MESSAGE, errors.UNKNOWN_TYPE,
    errors.INVALID_FIELD, errors.HELLO_REQUIRED, errors.ALREADY_HELLO,
    errors.UNSUPPORTED_PROTOCOL, errors.EMPTY_TEXT,
})  # fmt: skip
"""What the sans-I/O layer may raise about the peer's bytes (errors.py, PROTOCOL.md)."""
FATAL_CODES = frozenset({errors.FRAME_TOO_LARGE, errors.UNSUPPORTED_PROTOCOL})
WIRE_CODES = frozenset(
    value for name, value in vars(errors).items() if name.isupper() and isinstance(value, str)
)
"""Every stable code a server may send."""
SMALL_FRAME = 256
"""A max_frame small enough for generated input to cross it."""
GUARD = 60  # seconds: turns a hang into a failure, never a performance check
FUZZ = settings(max_examples=150, deadline=None)

Outcome = tuple[Any, ...]


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces at the offsets ``cuts``, empty pieces left out (b"" means EOF)."""
    bounds = [0, *sorted(min(offset, len(data)) for offset in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if a < b]


def decode(connection: Connection, chunks: list[bytes]) -> list[Outcome]:
    """Feed ``chunks`` one by one; every message or error that comes out, in order.

    Fails on any exception other than a RemoteProtocolError with a documented code, and on a
    fatal error that is not repeated by every later call.
    """
    outcomes: list[Outcome] = []
    for chunk in chunks:
        connection.receive_data(chunk)
        # Every error consumes at least a frame header, so this many calls always suffice.
        for _ in range(len(chunk) + 2):
            try:
                message = connection.next_message()
            except RemoteProtocolError as exc:
                assert exc.code in PROTOCOL_CODES, exc
                assert exc.fatal == (exc.code in FATAL_CODES), exc
                assert exc.message and isinstance(exc.message, str)
                assert exc.request_id is None or isinstance(exc.request_id, int | str)
                outcomes.append(("error", exc.code, exc.request_id))
                if exc.fatal:
                    try:
                        connection.next_message()
                    except RemoteProtocolError as again:
                        assert again is exc, "a fatal error repeats"
                    else:
                        raise AssertionError("a fatal error repeats") from None
                    return outcomes
                continue
            if message is NEED_DATA:
                break
            assert message is not CLOSED  # no b"" was fed
            assert isinstance(message, Message)
            outcomes.append(("message", message))
        else:
            raise AssertionError("next_message neither consumed input nor asked for more")
    return outcomes


@FUZZ
@given(
    st.one_of(byte_streams(), byte_streams(event_frames), st.binary(max_size=2000)),
    st.lists(st.integers(0, 2000), max_size=10),
)
def test_frame_decoder_on_any_bytes(data: bytes, cuts: list[int]) -> None:
    """Only frame_too_large (fatal) and invalid_frame; never holds more than one frame; a
    fatal error is raised for a length really over the limit, and nothing gets past it."""
    decoder = FrameDecoder(max_frame=SMALL_FRAME)
    chunks = cut(data, cuts)
    fed = 0
    for index, chunk in enumerate(chunks):
        decoder.feed(chunk)
        fed += len(chunk)
        while True:
            try:
                payload = decoder.next_payload()
            except RemoteProtocolError as exc:
                assert (exc.code, exc.fatal) in {
                    (errors.FRAME_TOO_LARGE, True),
                    (errors.INVALID_FRAME, False),
                }
                if exc.fatal:
                    check_fatal_sticks(decoder, data, fed, chunks[index + 1 :])
                    return
                continue
            if payload is None:
                break
            assert 0 < len(payload) <= SMALL_FRAME
        assert decoder.buffered < HEADER_SIZE + SMALL_FRAME


def check_fatal_sticks(decoder: FrameDecoder, data: bytes, fed: int, rest: list[bytes]) -> None:
    """The frame at fault announces more than the limit, and however many bytes follow,
    the decoder never reads past it (the stream position after it cannot be trusted)."""
    at = fed - decoder.buffered
    assert int.from_bytes(data[at : at + HEADER_SIZE], "big") > SMALL_FRAME
    for chunk in [*rest, b"\0\0\0\1x"]:  # one more, so that something always follows
        decoder.feed(chunk)
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_payload()
        assert again.value.code == errors.FRAME_TOO_LARGE and again.value.fatal


@FUZZ
@given(
    st.sampled_from([Role.SERVER, Role.CLIENT]),
    st.booleans(),
    st.one_of(byte_streams(), byte_streams(event_frames), st.binary(max_size=2000)),
    st.lists(st.integers(0, 2000), max_size=10),
    st.sampled_from([SMALL_FRAME, None]),
)
def test_connection_on_any_bytes(
    role: Role, hello_first: bool, data: bytes, cuts: list[int], max_frame: int | None
) -> None:
    """Arbitrary bytes give messages and documented protocol errors only, and the same ones
    however the stream is cut."""
    if role is Role.SERVER and hello_first:
        data = HELLO_FRAME + data
    whole = decode(Connection(role, max_frame), [data] if data else [])
    pieces = decode(Connection(role, max_frame), cut(data, cuts))
    assert pieces == whole


@FUZZ
@given(
    st.one_of(
        st.tuples(st.just(Role.SERVER), request_streams()),
        st.tuples(st.just(Role.CLIENT), event_streams()),
    ),
    st.data(),
)
def test_valid_streams_decode_the_same_however_split(
    role_and_messages: tuple[Role, list[Message]], data: st.DataObject
) -> None:
    role, sent = role_and_messages
    stream = b"".join(encode_frame(message) for message in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    assert decode(Connection(role), cut(stream, cuts)) == [("message", m) for m in sent]


@FUZZ
@given(st.one_of(valid_requests, valid_events))
def test_valid_messages_round_trip(message: Message) -> None:
    """encode -> decode gives the message back, through the dict and through a Connection."""
    wire = msgpack.unpackb(msgpack.packb(message.to_dict(), use_bin_type=True), raw=False)
    assert type(message).from_dict(wire) == message
    if isinstance(message, Request):
        sender, receiver = Connection(Role.CLIENT), Connection(Role.SERVER)
        if not isinstance(message, Hello):
            receiver.receive_data(HELLO_FRAME)
            assert isinstance(receiver.next_message(), Hello)
    else:
        sender, receiver = Connection(Role.SERVER), Connection(Role.CLIENT)
    receiver.receive_data(sender.send(message))
    assert receiver.next_message() == message
    assert receiver.next_message() is NEED_DATA


def mutations_of(cls: type[Message], name: str) -> list[str]:
    """The ways field ``name`` of ``cls`` can be made invalid on the wire."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    hint = hints(cls)[name]
    found = []
    if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
        found.append("missing")
    if not fits(object(), hint):  # a field of type Any takes anything
        found.append("wrong type")
    if spec.metadata.get("max_chars") and fits("", hint):
        found.append("too long")
    return found


MESSAGE_FIELDS = [
    (role, cls, name)
    for role, types in ((Role.SERVER, REQUEST_TYPES), (Role.CLIENT, EVENT_TYPES))
    for cls in types.values()
    for name in sorted(hints(cls))
]
BREAKABLE_FIELDS = [field for field in MESSAGE_FIELDS if mutations_of(*field[1:])]


def test_every_field_can_be_made_invalid() -> None:
    """A field that is optional and takes any value has nothing for the property below to
    check: a new one is a decision (a narrower type, or a place in this list)."""
    unbreakable = sorted(f"{cls.TYPE}.{name}" for _, cls, name in MESSAGE_FIELDS
                         if not mutations_of(cls, name))  # fmt: skip
    assert unbreakable == []
    assert len(BREAKABLE_FIELDS) == len(MESSAGE_FIELDS) > 100


@FUZZ
@given(st.sampled_from(BREAKABLE_FIELDS), st.data())
def test_wrong_or_missing_field_is_a_clear_invalid_field(
    field: tuple[Role, type[Message], str], data: st.DataObject
) -> None:
    """A field missing, of the wrong type or too long gives invalid_field naming the field,
    echoes the request's id, and leaves the connection usable."""
    role, cls, name = field
    fields = data.draw(messages(cls)).to_dict()
    mutation = data.draw(st.sampled_from(mutations_of(cls, name)))
    if mutation == "missing":
        fields.pop(name, None)
    elif mutation == "wrong type":
        fields[name] = data.draw(wrong_values(hints(cls)[name]))
    else:
        max_chars = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["max_chars"]
        fields[name] = "x" * (max_chars + 1)

    connection = Connection(role)
    if role is Role.SERVER and cls is not Hello:
        connection.receive_data(HELLO_FRAME)
        connection.next_message()
    connection.receive_data(frame(msgpack.packb(fields, use_bin_type=True)))
    with pytest.raises(RemoteProtocolError) as caught:
        connection.next_message()
    assert caught.value.code == errors.INVALID_FIELD
    assert f"{cls.TYPE}.{name}" in caught.value.message
    assert not caught.value.fatal
    if name != "id":
        request_id = fields.get("id")
        assert caught.value.request_id == request_id, "the error echoes the request's id"
    after = Hello(protocol=1, client="after") if cls is Hello else Ping(id="after")
    if role is Role.CLIENT:
        after = Pong(id="after")
    connection.receive_data(encode_frame(after))
    assert connection.next_message() == after


REQUEST_FIELD_NAMES = sorted(
    {"type", *(name for cls in REQUEST_TYPES.values() for name in hints(cls))}
)


@FUZZ
@given(
    st.sampled_from(sorted(REQUEST_TYPES)),
    st.dictionaries(st.sampled_from(REQUEST_FIELD_NAMES), msgpack_values, max_size=6),
)
def test_any_request_map_is_a_message_or_a_recoverable_error(
    type_name: str, fields: dict[str, Any]
) -> None:
    """A well-delimited map of request fields with any values decodes to its request or gives
    a documented error that echoes its id; the next frame is read after it (only a hello of
    another protocol version ends the connection)."""
    fields.setdefault("type", type_name)
    connection = Connection(Role.SERVER)
    connection.receive_data(HELLO_FRAME)
    assert isinstance(connection.next_message(), Hello)
    connection.receive_data(
        frame(msgpack.packb(fields, use_bin_type=True)) + encode_frame(Ping(id="next"))
    )
    try:
        message = connection.next_message()
    except RemoteProtocolError as exc:
        assert exc.code in PROTOCOL_CODES, exc
        assert exc.fatal == (exc.code == errors.UNSUPPORTED_PROTOCOL), exc
        request_id = fields.get("id")
        if isinstance(request_id, int | str) and not isinstance(request_id, bool):
            assert exc.request_id == request_id, "the error echoes the request's id"
        if exc.fatal:
            return
    else:
        assert isinstance(message, Message) and fields["type"] == message.TYPE
    assert connection.next_message() == Ping(id="next")


PURE_PROPERTIES = (
    test_frame_decoder_on_any_bytes,
    test_connection_on_any_bytes,
    test_valid_streams_decode_the_same_however_split,
    test_valid_messages_round_trip,
    test_wrong_or_missing_field_is_a_clear_invalid_field,
    test_any_request_map_is_a_message_or_a_recoverable_error,
)
"""The properties that ``benchmarks/fuzz.py`` runs for as long as it is told to."""


DEFAULTED_FIELDS = [
    (cls, f.name)
    for cls in REQUEST_TYPES.values()
    for f in dataclasses.fields(cls)
    if f.default is not dataclasses.MISSING
    and f.default is not None
    and not fits(None, hints(cls)[f.name])
]


@pytest.mark.parametrize(
    ("cls", "name"), DEFAULTED_FIELDS, ids=[f"{c.TYPE}.{n}" for c, n in DEFAULTED_FIELDS]
)
@settings(max_examples=5, deadline=None, phases=[Phase.generate], database=None)
@given(st.data())
def test_nil_is_the_same_as_absent(cls: type[Message], name: str, data: st.DataObject) -> None:
    absent = {key: value for key, value in data.draw(messages(cls)).to_dict().items()}
    absent.pop(name, None)
    assert cls.from_dict({**absent, name: None}) == cls.from_dict(absent)


@pytest.mark.parametrize(
    "fields",
    [{"type": "ping", b"id": 1}, {b"type": "ping"}, {"type": "voices", "id": {b"k": 1}}],
    ids=["bin-key", "bin-type-key", "nested-bin-key"],
)
def test_bin_map_keys_are_invalid_frames(fields: dict[Any, Any]) -> None:
    connection = Connection(Role.SERVER)
    connection.receive_data(HELLO_FRAME + frame(msgpack.packb(fields, use_bin_type=True)))
    connection.next_message()
    with pytest.raises(RemoteProtocolError) as caught:
        connection.next_message()
    assert caught.value.code == errors.INVALID_FRAME


# --- garbage over a real socket -----------------------------------------------------------


def exchange(port: int, data: bytes) -> list[Event]:
    """Send ``data``, then end of stream; every event the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=GUARD) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first (a fatal error): what it sent is still readable
        received = bytearray()
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    connection = Connection(Role.CLIENT)
    connection.receive_data(bytes(received))
    connection.receive_data(b"")
    events = []
    while (event := connection.next_message()) is not CLOSED:
        assert isinstance(event, Event), "the server sent a partial frame"
        events.append(event)
    return events


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.booleans(), byte_streams())
def test_garbage_over_a_socket_leaves_the_server_serving(
    live_server: ServerThread, hello_first: bool, data: bytes
) -> None:
    events = exchange(live_server.port, (HELLO_FRAME if hello_first else b"") + data)
    for event in events:
        if isinstance(event, Error):
            assert event.code in WIRE_CODES and event.code != errors.INTERNAL_ERROR, event
        if isinstance(event, Finished):
            assert event.status != "error", event
    replies = exchange(live_server.port, HELLO_FRAME + encode_frame(Ping(id="alive")))
    assert [type(event).__name__ for event in replies] == ["Welcome", "Pong"]


@pytest.fixture(autouse=True)
def _leave_no_connection(request: pytest.FixtureRequest) -> Any:
    """The session server is shared with test_server.py, which counts its connections."""
    yield
    if "live_server" in request.fixturenames:
        live_server: ServerThread = request.getfixturevalue("live_server")
        asyncio.run(live_server.wait_for_connections(at_most=0))
