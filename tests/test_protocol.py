"""The sans-I/O protocol layer against the shared vectors, split streams and garbage."""

from __future__ import annotations

import itertools
from typing import Any

import msgpack
import pytest
from helpers import REPO, VECTORS, from_json
from hypothesis import given, settings
from hypothesis import strategies as st

from dialogue_tts import errors
from dialogue_tts.errors import LocalProtocolError, RemoteProtocolError
from dialogue_tts.messages import EVENT_TYPES, REQUEST_TYPES, Hello, Message, Ping, Say, Skip
from dialogue_tts.protocol import CLOSED, NEED_DATA, Connection, FrameDecoder, Role, encode_frame

HELLO = encode_frame(Hello(protocol=1, client="test"))


def messages_from(connection: Connection) -> list[Message]:
    found = []
    while (message := connection.next_message()) not in (NEED_DATA, CLOSED):
        assert isinstance(message, Message)
        found.append(message)
    return found


def server_connection(*, hello: bool = True) -> Connection:
    connection = Connection(Role.SERVER)
    if hello:
        connection.receive_data(HELLO)
        assert isinstance(connection.next_message(), Hello)
    return connection


def test_vectors_are_current() -> None:
    """vectors.json is what make_vectors.py produces: regenerate it after a protocol change."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_vectors", REPO / "protocol" / "make_vectors.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.build() == VECTORS


DIRECTIONS = [
    (Role.SERVER, Role.CLIENT, REQUEST_TYPES, vector) for vector in VECTORS["requests"]
] + [(Role.CLIENT, Role.SERVER, EVENT_TYPES, vector) for vector in VECTORS["events"]]


@pytest.mark.parametrize(
    ("receiver", "sender", "types", "vector"),
    DIRECTIONS,
    ids=lambda value: value["name"] if isinstance(value, dict) and "name" in value else None,
)
def test_message_vectors(
    receiver: Role, sender: Role, types: dict[str, type[Message]], vector: dict[str, Any]
) -> None:
    """Each frame decodes to its message, and the message encodes to exactly that frame."""
    expected = from_json(vector["message"])
    connection = Connection(receiver)
    if receiver is Role.SERVER and expected["type"] != "hello":
        connection.receive_data(HELLO)
        connection.next_message()
    connection.receive_data(bytes.fromhex(vector["frame_hex"]))
    message = connection.next_message()
    assert isinstance(message, types[expected["type"]])
    assert message.to_dict() == expected
    assert Connection(sender).send(message).hex() == vector["frame_hex"]


@pytest.mark.parametrize("vector", VECTORS["bad_frames"], ids=lambda v: v["name"])
def test_bad_frame_vectors(vector: dict[str, Any]) -> None:
    connection = server_connection(hello=not vector.get("before_hello"))
    connection.receive_data(bytes.fromhex(vector["frame_hex"]))
    with pytest.raises(RemoteProtocolError) as caught:
        connection.next_message()
    assert caught.value.code == vector["error"]
    assert caught.value.request_id == vector.get("id")
    assert caught.value.fatal == bool(vector.get("closes"))
    # Recoverable errors leave the connection usable; fatal ones repeat.
    connection.receive_data(encode_frame(Ping(id="after")))
    if vector.get("closes"):
        with pytest.raises(RemoteProtocolError):
            connection.next_message()
    elif vector.get("before_hello"):
        with pytest.raises(RemoteProtocolError) as again:
            connection.next_message()
        assert again.value.code == errors.HELLO_REQUIRED
    else:
        assert connection.next_message() == Ping(id="after")


@pytest.mark.parametrize("splits", VECTORS["stream"]["splits"])
def test_stream_vector_splits(splits: list[int]) -> None:
    stream = bytes.fromhex(VECTORS["stream"]["hex"])
    names = {vector["name"]: vector for vector in VECTORS["requests"]}
    expected = [from_json(names[name]["message"]) for name in VECTORS["stream"]["names"]]
    connection = Connection(Role.SERVER)
    got: list[Message] = []
    bounds = [0, *splits, len(stream)]
    for start, end in itertools.pairwise(bounds):
        connection.receive_data(stream[start:end])
        got += messages_from(connection)
    assert [message.to_dict() for message in got] == expected


def test_oversized_length_is_refused_before_buffering() -> None:
    decoder = FrameDecoder(max_frame=1024)
    decoder.feed((1025).to_bytes(4, "big") + b"x" * 10)
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_payload()
    assert caught.value.code == errors.FRAME_TOO_LARGE and caught.value.fatal
    assert decoder.buffered == 14  # nothing was allocated for the announced size


def test_end_of_stream() -> None:
    connection = server_connection()
    connection.receive_data(encode_frame(Ping(id=1))[:5])
    assert connection.next_message() is NEED_DATA
    connection.receive_data(b"")
    assert connection.next_message() is CLOSED


def test_hello_then_requests_and_handshake_rules() -> None:
    connection = Connection(Role.SERVER)
    connection.receive_data(encode_frame(Skip(id=1, speaker="a")))
    with pytest.raises(RemoteProtocolError) as caught:
        connection.next_message()
    assert (caught.value.code, caught.value.request_id) == (errors.HELLO_REQUIRED, 1)
    connection.receive_data(HELLO + encode_frame(Skip(id=2, speaker="a")))
    assert isinstance(connection.next_message(), Hello)
    assert connection.next_message() == Skip(id=2, speaker="a")


def test_send_checks_direction_and_fields() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.SERVER).send(Ping())
    with pytest.raises(LocalProtocolError) as caught:
        Connection(Role.CLIENT).send(Say(speaker="a", text=" "))
    assert caught.value.code == errors.EMPTY_TEXT


# --- properties ----------------------------------------------------------------------------

names = st.text(min_size=1, max_size=20)
line_ids = st.one_of(st.integers(-(2**63), 2**64 - 1), names)
requests = st.one_of(
    st.builds(Say, id=st.one_of(st.none(), line_ids), speaker=names,
              text=st.text(min_size=1).filter(str.strip), line=st.one_of(st.none(), line_ids),
              interrupt=st.booleans(), rate=st.floats(0.1, 10), volume=st.floats(0, 10),
              format=st.sampled_from(["s16le", "f32le", "wav"])),
    st.builds(Skip, id=st.one_of(st.none(), line_ids), speaker=names),
    st.builds(Ping, id=st.one_of(st.none(), line_ids)),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6), st.data())
def test_any_split_decodes_the_same(messages: list[Message], data: st.DataObject) -> None:
    stream = HELLO + b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    connection = Connection(Role.SERVER)
    got: list[Message] = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        if start == end:
            continue  # b"" would mean end of stream
        connection.receive_data(stream[start:end])
        got += messages_from(connection)
    assert got[1:] == messages


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
              st.text(max_size=8), st.binary(max_size=8)),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_only_raises_protocol_errors(garbage: bytes) -> None:
    connection = server_connection()
    connection.receive_data(garbage)
    for _ in range(len(garbage) + 2):
        try:
            if connection.next_message() is NEED_DATA:
                break
        except RemoteProtocolError as exc:
            if exc.fatal:
                break


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "type",
                "id",
                "speaker",
                "text",
                "line",
                "rate",
                "format",
                "volume",
                "interrupt",
                "protocol",
                "client",
            ]
        ),
        json_like,
        max_size=6,
    ),
    st.sampled_from(sorted(REQUEST_TYPES)),
)
def test_random_maps_raise_only_protocol_errors(fields: dict[str, Any], type_name: str) -> None:
    fields.setdefault("type", type_name)
    payload = msgpack.packb(fields, use_bin_type=True)
    connection = server_connection()
    connection.receive_data(
        len(payload).to_bytes(4, "big") + payload + encode_frame(Ping(id="next"))
    )
    try:
        message = connection.next_message()
        assert isinstance(message, Message)
    except RemoteProtocolError as exc:
        assert exc.code in vars(errors).values()
    # Whatever the first frame was, the connection goes on (only hello can end it).
    if fields.get("type") != "hello":
        assert connection.next_message() == Ping(id="next")
