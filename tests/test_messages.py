"""Message validation from type hints."""

from __future__ import annotations

import math

import pytest

from dialogue_tts import errors
from dialogue_tts.messages import Cancel, Hello, InvalidMessage, Say, Skipped, Synthesize


def test_say_defaults_and_float_from_int() -> None:
    say = Say.from_dict({"type": "say", "speaker": "a", "text": "hi", "rate": 2, "extra": [1]})
    assert say == Say(speaker="a", text="hi", rate=2.0)
    assert isinstance(say.rate, float)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"speaker": "a"}, errors.INVALID_FIELD),
        ({"speaker": 1, "text": "hi"}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "interrupt": 1}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "rate": True}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "rate": math.nan}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "volume": -1}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "rate": 11}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "line": 1.0}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "line": True}, errors.INVALID_FIELD),
        ({"speaker": "a" * 257, "text": "hi"}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "hi", "markup": "html"}, errors.INVALID_FIELD),
        ({"speaker": "a", "text": "\t \n"}, errors.EMPTY_TEXT),
    ],
)
def test_say_rejects(fields: dict[str, object], code: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        Say.from_dict({"type": "say", **fields})
    assert caught.value.code == code
    assert "say." in str(caught.value)  # the message names the field


def test_error_message_names_expected_type() -> None:
    with pytest.raises(
        InvalidMessage, match=r"cancel\.line: expected integer or string, got float"
    ):
        Cancel.from_dict({"type": "cancel", "line": 2.5})


def test_nil_is_absent_and_keep_none() -> None:
    assert Say.from_dict({"type": "say", "speaker": "a", "text": "x", "voice": None}).voice is None
    assert Skipped(speaker="a", line=None).to_dict() == {
        "type": "skipped",
        "speaker": "a",
        "line": None,
    }
    assert "id" not in Hello(protocol=1, client="c").to_dict()


def test_synthesize_checks_like_say() -> None:
    with pytest.raises(InvalidMessage) as caught:
        Synthesize.from_dict({"type": "synthesize", "text": "hi", "format": "mp3"})
    assert caught.value.code == errors.INVALID_FIELD
