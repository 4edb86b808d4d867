"""errors.py: the stable error codes, the two sides at fault, and an error's wire form."""

from __future__ import annotations

import re

import msgpack
import pytest
from helpers import REPO

from dialogue_tts import errors
from dialogue_tts.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from dialogue_tts.messages import Error
from dialogue_tts.protocol import HEADER_SIZE, NEED_DATA, Connection, Role

CODES = {name: value for name, value in vars(errors).items() if name.isupper()}


def documented_codes() -> dict[str, bool]:
    """PROTOCOL.md's table of error codes: code -> whether the server closes after it."""
    section = (REPO / "protocol" / "PROTOCOL.md").read_text("utf-8").split("## Errors", 1)[1]
    rows = re.findall(r"^\| `([a-z_]+)` \| .* \| (yes|no|at hello) \|$", section, re.MULTILINE)
    return {code: closes != "no" for code, closes in rows}


def test_codes_are_distinct_snake_case_constants_named_after_their_value() -> None:
    assert len(CODES) > 20
    for name, value in CODES.items():
        assert isinstance(value, str) and re.fullmatch(r"[a-z]+(_[a-z]+)*", value), name
        assert name == value.upper(), "a code's constant is its value in capitals"
    assert len(set(CODES.values())) == len(CODES)
    assert set(CODES) <= set(errors.__all__)


def test_every_code_is_documented_and_every_documented_code_exists() -> None:
    documented = documented_codes()
    assert sorted(documented) == sorted(CODES.values())
    # The errors the protocol layer raises as fatal are the ones documented as closing.
    assert documented[errors.FRAME_TOO_LARGE] and documented[errors.UNSUPPORTED_PROTOCOL]
    assert not documented[errors.INVALID_FIELD] and not documented[errors.INVALID_FRAME]


def test_an_error_names_the_side_at_fault() -> None:
    local = LocalProtocolError(errors.EMPTY_TEXT, "say.text: empty", 4)
    remote = RemoteProtocolError(errors.FRAME_TOO_LARGE, "too big", fatal=True)
    assert isinstance(local, ProtocolError) and isinstance(remote, ProtocolError)
    assert not isinstance(local, RemoteProtocolError) and not isinstance(remote, LocalProtocolError)
    assert (local.code, local.message, local.request_id, local.fatal) == (
        errors.EMPTY_TEXT, "say.text: empty", 4, False,
    )  # fmt: skip
    assert (remote.request_id, remote.fatal) == (None, True)
    assert str(local) == "say.text: empty"
    assert repr(local) == "LocalProtocolError('empty_text', 'say.text: empty', 4)"
    with pytest.raises(ProtocolError):  # one except clause catches both sides
        raise remote


@pytest.mark.parametrize("request_id", [7, "say-3", None])
def test_an_error_goes_on_the_wire_as_an_error_event(request_id: int | str | None) -> None:
    exc = RemoteProtocolError(errors.UNKNOWN_TYPE, "unknown message type 'shout'", request_id)
    event = Connection.error_for(exc)
    assert event == Error(id=request_id, code=errors.UNKNOWN_TYPE, message=exc.message)
    frame = Connection(Role.SERVER).send(event)
    wire = msgpack.unpackb(frame[HEADER_SIZE:], raw=False)
    expected = {"type": "error", "code": "unknown_type", "message": exc.message}
    if request_id is not None:
        expected["id"] = request_id
    assert wire == expected  # no id at all when the request's id could not be read
    client = Connection(Role.CLIENT)
    client.receive_data(frame)
    assert client.next_message() == event and client.next_message() is NEED_DATA


def test_the_error_for_a_bad_frame_echoes_the_id_it_could_read() -> None:
    server = Connection(Role.SERVER)
    payload = msgpack.packb({"type": "shout", "id": "s1"})
    server.receive_data(len(payload).to_bytes(HEADER_SIZE, "big") + payload)
    with pytest.raises(RemoteProtocolError) as caught:
        server.next_message()
    event = Connection.error_for(caught.value)
    assert (event.id, event.code) == ("s1", errors.UNKNOWN_TYPE)
    assert "shout" in event.message
