"""Turning a line as a game engine writes it into what the voice should say.

``prepare(text, markup, language)`` strips engine markup, applies the reading rules of the
voice's language (``reading.py``) and returns the line as a list of parts: ``Spoken`` texts
and ``Pause`` silences (Ren'Py's ``{w=0.5}`` and ``{p}``). Each ``Spoken`` part remembers
which characters of the original line it stands for (see ``tracked.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from .lexicon import WordBook
from .reading import read_english
from .tracked import Spoken, Tracked

__all__ = ["DEFAULT_CLICK_PAUSE", "Part", "Pause", "Spoken", "prepare"]

DEFAULT_CLICK_PAUSE: Final = 0.4
"""Seconds of silence for a Ren'Py wait that has no time ({w} or {p}): the player would click."""
MAX_PAUSE: Final = 5.0
"""Longest silence a markup pause may ask for."""


@dataclass(frozen=True)
class Pause:
    seconds: float


Part = str | Pause
"""A text part is a ``Spoken`` from ``prepare``; any plain str works where offsets do not
matter (tests, cached lines)."""

# Ren'Py text tags: "{{" is a literal brace; a tag is {name}, {name=value} or {/name}.
_RENPY_TOKEN = re.compile(r"\{\{|\[\[|\{(/?)([a-z_]*)(?:=([^}]*))?\}|\[[^\[\]]*\]")
# Godot RichTextLabel BBCode: [tag], [tag=value], [tag key=value], [/tag]; [lb]/[rb] are brackets.
_BBCODE_DROP_CONTENT = re.compile(r"\[img[^\]]*\].*?\[/img\]", re.IGNORECASE | re.DOTALL)
_BBCODE_TAG = re.compile(r"\[(/?)([a-z_]+)(?:[= ][^\]]*)?\]", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# Control characters: nothing to say, and a NUL ends espeak's C string ("embedded null
# character"); each is read as a space.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Text with nothing a voice can say (only punctuation and symbols).
_SPEAKABLE = re.compile(r"\w")


def prepare(
    text: str, markup: str = "plain", language: str = "", words: WordBook | None = None
) -> list[Part]:
    """Strip ``markup`` ("plain", "renpy" or "bbcode") and split the line at pauses.

    Text parts have their whitespace collapsed and, for English voices (``language``
    starting with "en"), the reading rules applied; then the lexicon's ``words`` become
    their phonemes (after the reading rules, so that an entry also covers what a rule
    wrote, such as "Doctor" for "Dr."). Parts with nothing speakable are dropped, so a
    line of nothing but markup or punctuation yields ``[]`` (the caller reports it as
    empty).
    """
    original = Tracked.of(text).sub(_CONTROL, " ")
    if markup == "renpy":
        parts = _renpy_parts(original)
    elif markup == "bbcode":
        parts = [_strip_bbcode(original)]
    elif markup == "plain":
        parts = [original]
    else:
        raise ValueError(f"unknown markup {markup!r}")
    english = language.lower().startswith("en")
    read = [read_english(p) if english and isinstance(p, Tracked) else p for p in parts]
    if words:
        read = [words.apply(p) if isinstance(p, Tracked) else p for p in read]
    return _tidy(read)


def _renpy_parts(text: Tracked) -> list[Tracked | Pause]:
    parts: list[Tracked | Pause] = []
    pieces: list[Tracked] = []
    position = 0
    for match in _RENPY_TOKEN.finditer(text.text):
        pieces.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token in ("{{", "[["):
            pieces.append(text[match.start() : match.end()].replaced(token[0]))
        elif token.startswith("{"):
            pause = _renpy_pause(match.group(2), match.group(3), closing=bool(match.group(1)))
            if pause is not None:
                parts.append(Tracked.join(pieces))
                parts.append(pause)
                pieces = []
        # "[name]" is an interpolation Ren'Py did not substitute: say nothing for it.
    pieces.append(text[position:])
    parts.append(Tracked.join(pieces))
    return parts


def _renpy_pause(name: str, value: str | None, *, closing: bool) -> Pause | None:
    if closing or name not in ("w", "p"):
        return None  # styling tags ({b}, {color=...}, {nw}, {fast}...) only go away
    seconds = DEFAULT_CLICK_PAUSE
    if value:
        try:
            seconds = float(value)
        except ValueError:
            return Pause(DEFAULT_CLICK_PAUSE)
    return Pause(min(max(seconds, 0.0), MAX_PAUSE))


def _strip_bbcode(text: Tracked) -> Tracked:
    text = text.sub(_BBCODE_DROP_CONTENT, "")

    def replace(match: re.Match[str]) -> str:
        name = match.group(2).lower()
        return {"lb": "[", "rb": "]"}.get(name, "")

    return text.sub(_BBCODE_TAG, replace)


def _tidy(parts: list[Tracked | Pause]) -> list[Part]:
    tidy: list[Part] = []
    for part in parts:
        if isinstance(part, Pause):
            if tidy and part.seconds > 0:
                tidy.append(part)  # a pause before anything is said is dropped
            continue
        spoken = part.sub(_SPACES, " ").strip()
        if _SPEAKABLE.search(spoken.text):
            tidy.append(spoken.spoken())
    while tidy and isinstance(tidy[-1], Pause):
        tidy.pop()
    return tidy
