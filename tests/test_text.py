"""Markup stripping and pauses."""

from __future__ import annotations

import pytest

from dialogue_tts.text import DEFAULT_CLICK_PAUSE, Pause, prepare


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Hello {b}there{/b}, friend.", ["Hello there, friend."]),
        ("Wait{w=0.5} for it.", ["Wait", Pause(0.5), "for it."]),
        ("One.{p}Two.{nw}", ["One.", Pause(DEFAULT_CLICK_PAUSE), "Two."]),
        (
            "{color=#f00}Red{/color} and {{braces} and [[brackets].",
            ["Red and {braces} and [brackets]."],
        ),
        ("Hi [player_name], welcome.", ["Hi , welcome."]),
        ("{w=2}Leading pause dropped{w=1}", ["Leading pause dropped"]),
        ("Long{w=99} pause", ["Long", Pause(5.0), "pause"]),
        ("{fast}{i}{/i}", []),
    ],
)
def test_renpy(text: str, expected: list[object]) -> None:
    assert prepare(text, "renpy") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[b]Bold[/b] [color=red]move[/color]!", ["Bold move!"]),
        ("Look [img=32]res://icon.png[/img] here [lb]1[rb].", ["Look here [1]."]),
        ('[url={"a": 1}]link[/url] [font_size=20]big[/font_size]', ["link big"]),
    ],
)
def test_bbcode(text: str, expected: list[str]) -> None:
    assert prepare(text, "bbcode") == expected


def test_plain_keeps_markup_and_collapses_space() -> None:
    assert prepare("  {b}Hi{/b}\n\n there  ", "plain") == ["{b}Hi{/b} there"]


def test_control_characters_are_read_as_spaces() -> None:
    # A NUL would end espeak's C string; the rest are nothing to say either.
    parts = prepare("Halt!\x00Who\x07 goes\x1bthere?")
    assert [str(p) for p in parts] == ["Halt! Who goes there?"]
    assert prepare("\x00\x01") == []


@pytest.mark.parametrize(
    ("text", "markup", "language", "expected"),
    [
        (
            "{b}こんにちは{/b}、{w=0.5}旅の方。",
            "renpy",
            "ja",
            ["こんにちは、", Pause(0.5), "旅の方。"],
        ),
        ("「[name]さん」{i}ようこそ{/i}！{nw}", "renpy", "ja", ["「さん」ようこそ！"]),
        ("[color=red]你好[/color]，[lb]旅行者[rb]。", "bbcode", "zh", ["你好，[旅行者]。"]),
        (
            "{color=#0f0}你好{/color}{p}再见。",
            "renpy",
            "zh",
            ["你好", Pause(DEFAULT_CLICK_PAUSE), "再见。"],
        ),
    ],
)
def test_markup_is_stripped_from_japanese_and_chinese_lines(
    text: str, markup: str, language: str, expected: list[object]
) -> None:
    assert prepare(text, markup, language) == expected


def test_english_reading_rules_are_for_english_voices_only() -> None:
    assert [str(p) for p in prepare("Dr. Tanaka at 3.", "plain", "en-US")] != ["Dr. Tanaka at 3."]
    assert [str(p) for p in prepare("Dr. Tanaka at 3.", "plain", "ja")] == ["Dr. Tanaka at 3."]
