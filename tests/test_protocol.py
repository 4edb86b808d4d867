"""The sans-I/O protocol layer against the shared vectors, split streams and its edge cases.

Its properties on generated input (any bytes, any split, any wrong field) are in
test_fuzz.py, which ``benchmarks/fuzz.py`` also runs for as long as it is told to.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from helpers import REPO, VECTORS, from_json

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


@pytest.mark.parametrize("max_frame", [1, 1024])
def test_a_frame_of_exactly_max_frame_is_read(max_frame: int) -> None:
    decoder = FrameDecoder(max_frame=max_frame)
    decoder.feed(max_frame.to_bytes(4, "big") + b"x" * max_frame + b"\0\0")
    assert decoder.next_payload() == b"x" * max_frame
    assert decoder.next_payload() is None and decoder.buffered == 2
    decoder.feed((max_frame + 1).to_bytes(4, "big")[2:])
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_payload()
    assert caught.value.code == errors.FRAME_TOO_LARGE and caught.value.fatal


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
