"""Turning a line as a game engine writes it into what the voice should say.

``prepare(text, markup)`` strips engine markup and returns the line as a list of parts:
strings to speak and ``Pause`` silences (Ren'Py's ``{w=0.5}`` and ``{p}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = ["DEFAULT_CLICK_PAUSE", "Part", "Pause", "prepare"]

DEFAULT_CLICK_PAUSE: Final = 0.4
"""Seconds of silence for a Ren'Py wait that has no time ({w} or {p}): the player would click."""
MAX_PAUSE: Final = 5.0
"""Longest silence a markup pause may ask for."""


@dataclass(frozen=True)
class Pause:
    seconds: float


Part = str | Pause

# Ren'Py text tags: "{{" is a literal brace; a tag is {name}, {name=value} or {/name}.
_RENPY_TOKEN = re.compile(r"\{\{|\[\[|\{(/?)([a-z_]*)(?:=([^}]*))?\}|\[[^\[\]]*\]")
# Godot RichTextLabel BBCode: [tag], [tag=value], [tag key=value], [/tag]; [lb]/[rb] are brackets.
_BBCODE_DROP_CONTENT = re.compile(r"\[img[^\]]*\].*?\[/img\]", re.IGNORECASE | re.DOTALL)
_BBCODE_TAG = re.compile(r"\[(/?)([a-z_]+)(?:[= ][^\]]*)?\]", re.IGNORECASE)
_SPACES = re.compile(r"\s+")


def prepare(text: str, markup: str = "plain") -> list[Part]:
    """Strip ``markup`` ("plain", "renpy" or "bbcode") and split the line at pauses.

    Text parts have their whitespace collapsed; empty parts are dropped, so a line of
    nothing but markup yields ``[]`` (the caller reports it as empty).
    """
    if markup == "renpy":
        parts = _renpy_parts(text)
    elif markup == "bbcode":
        parts = [_strip_bbcode(text)]
    elif markup == "plain":
        parts = [text]
    else:
        raise ValueError(f"unknown markup {markup!r}")
    return _tidy(parts)


def _renpy_parts(text: str) -> list[Part]:
    parts: list[Part] = []
    pieces: list[str] = []
    position = 0
    for match in _RENPY_TOKEN.finditer(text):
        pieces.append(text[position : match.start()])
        position = match.end()
        token = match.group(0)
        if token == "{{":
            pieces.append("{")
        elif token == "[[":
            pieces.append("[")
        elif token.startswith("{"):
            pause = _renpy_pause(match.group(2), match.group(3), closing=bool(match.group(1)))
            if pause is not None:
                parts.append("".join(pieces))
                parts.append(pause)
                pieces = []
        # "[name]" is an interpolation Ren'Py did not substitute: say nothing for it.
    pieces.append(text[position:])
    parts.append("".join(pieces))
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


def _strip_bbcode(text: str) -> str:
    text = _BBCODE_DROP_CONTENT.sub("", text)

    def replace(match: re.Match[str]) -> str:
        name = match.group(2).lower()
        return {"lb": "[", "rb": "]"}.get(name, "")

    return _BBCODE_TAG.sub(replace, text)


def _tidy(parts: list[Part]) -> list[Part]:
    tidy: list[Part] = []
    for part in parts:
        if isinstance(part, Pause):
            if tidy and part.seconds > 0:
                tidy.append(part)  # a pause before anything is said is dropped
            continue
        spoken = _SPACES.sub(" ", part).strip()
        if spoken:
            tidy.append(spoken)
    while tidy and isinstance(tidy[-1], Pause):
        tidy.pop()
    return tidy
