"""Word, phoneme and viseme marks streamed with a line's audio, end to end on the real voice."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import ServerThread

from dialogue_tts.client import Client
from dialogue_tts.timings import VISEMES

ALL = ["word", "phoneme", "viseme"]


async def say_with_marks(
    server: ServerThread, text: str, **options: Any
) -> tuple[int, int, list[Any]]:
    """(samples, sample_rate, marks events) of one line."""
    async with await Client.connect(port=server.port, pace=False) as client:
        handle = await client.say("bard", text, **options)
        marks: list[Any] = []
        rate = 0
        async for event in handle.events():
            if event.TYPE == "marks":
                marks.append(event)
            elif event.TYPE == "started":
                rate = event.sample_rate
            elif event.TYPE == "finished":
                assert event.status == "done", event.message
                return event.samples, rate, marks
    raise AssertionError("no finished")


def joined(marks: list[Any], kind: str) -> list[list[Any]]:
    return [unit for event in marks for unit in (getattr(event, kind) or [])]


def check_contiguous(units: list[list[Any]]) -> list[tuple[int, int]]:
    """Units in order, each starting where the last ended, except at pauses: the stretches."""
    stretches: list[tuple[int, int]] = []
    for start, length, *_ in units:
        assert length >= 0
        if stretches and stretches[-1][1] == start:
            stretches[-1] = (stretches[-1][0], start + length)
        else:
            assert not stretches or start > stretches[-1][1]  # monotonic
            stretches.append((start, start + length))
    return stretches


async def test_marks_cover_the_line_and_point_into_the_original_text(
    live_server: ServerThread,
) -> None:
    text = "{b}Halt!{/b} {w=0.5}Who goes there, stranger? I owe you 250 gold."
    samples, rate, marks = await say_with_marks(live_server, text, markup="renpy", timings=ALL)
    phonemes, visemes, words = (joined(marks, kind) for kind in ("phonemes", "visemes", "words"))
    # Phonemes and visemes cover every sample but the {w=0.5} silence, which sits after the
    # first piece ("Halt!") and is half a second long.
    for units in (phonemes, visemes):
        stretches = check_contiguous(units)
        assert stretches[0][0] == 0 and stretches[-1][1] == samples
        assert len(stretches) == 2
        assert stretches[1][0] - stretches[0][1] == pytest.approx(0.5 * rate, abs=1)
    assert {viseme for _, _, viseme in visemes} <= set(VISEMES)
    assert {"PP", "aa"} & {viseme for _, _, viseme in visemes}
    # Words: in order, inside the audio, and each one's characters are that word of the
    # text the client sent, markup and all.
    said = [text[start:end] for _, _, start, end in words]
    assert said[:2] == ["Halt", "Who"]  # the word itself: punctuation is not read out
    assert "250" in said and "stranger" in said and said[-1] == "gold"
    starts = [start for start, _, _, _ in words]
    assert starts == sorted(starts) and words[-1][0] + words[-1][1] <= samples
    assert words[1][0] >= stretches_end(phonemes, 0) + 0.5 * rate - 1  # "Who" after the pause


def stretches_end(units: list[list[Any]], index: int) -> int:
    return check_contiguous(units)[index][1]


async def test_marks_follow_rate_pitch_and_resampling(live_server: ServerThread) -> None:
    text = "The lanterns are lit, and the road north is clear tonight."
    samples, rate, marks = await say_with_marks(
        live_server, text, rate=1.4, pitch=1.2, sample_rate=48000, timings=["phoneme", "word"]
    )
    assert rate == 48000
    stretches = check_contiguous(joined(marks, "phonemes"))
    assert stretches == [(0, samples)]  # one phoneme's rounding at most: here, none
    words = joined(marks, "words")
    assert [text[s:e] for _, _, s, e in words][-1] == "tonight"
    assert not joined(marks, "visemes")  # only what was asked for


async def test_no_marks_unless_asked_and_hello_sets_the_default(live_server: ServerThread) -> None:
    _, _, marks = await say_with_marks(live_server, "Quiet now.")
    assert marks == []
    async with await Client.connect(
        port=live_server.port, pace=False, timings=["viseme"]
    ) as client:
        handle = await client.say("bard", "Hello there.")
        kinds = set()
        async for event in handle.events():
            if event.TYPE == "marks":
                kinds |= {k for k in ("words", "phonemes", "visemes") if getattr(event, k)}
        assert kinds == {"visemes"}


async def test_words_round_trip_through_reading_rules_and_unicode_punctuation(
    live_server: ServerThread,
) -> None:
    text = "“Dr. Hale,” she said — «it’s 6:30… and £5 is enough»."
    _, _, marks = await say_with_marks(live_server, text, timings=["word"])
    said = [text[start:end] for _, _, start, end in joined(marks, "words")]
    # "Dr." is read "Doctor", "£5" "5 pounds": each still points at what the client wrote.
    assert said[:4] == ["Dr.", "Hale", "she", "said"]
    assert "it’s" in said and "6:30" in said and "£5" in said
    assert said[-1] == "enough"
    starts = [start for start, _, _, _ in joined(marks, "words")]
    assert starts == sorted(starts)
