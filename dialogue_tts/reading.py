"""Reading rules for English lines: what espeak-ng would otherwise misread in game dialogue.

espeak-ng already reads plain numbers, ordinals, times, percentages and most symbols well.
What it gets wrong, measured on the project corpus and game-style lines:

- an abbreviation's period ends the sentence: "Dr. Hale" becomes "Doctor. Hale", with a
  sentence pause, and "vs." or "e.g." are spelled out letter by letter;
- currency reads backwards: "$5.50" is "dollar five point five zero";
- "#3" is "hash three", "x3" is "ex three", "km/h" is "K M slash H";
- years read as cardinals ("in 1895" is "one thousand eight hundred ninety-five");
- an ellipsis or a dash between words gets no pause at all ("know—maybe").

Every rule rewrites through ``Tracked.sub``, so the result still maps back to the original.
"""

from __future__ import annotations

import re
from typing import Final

from .tracked import Tracked

__all__ = ["read_english"]

# Titles always precede a name: their period is never a sentence end.
_TITLES: Final = {
    "Dr": "Doctor", "Mr": "Mister", "Mrs": "Missus", "Ms": "Miz", "Prof": "Professor",
    "Capt": "Captain", "Sgt": "Sergeant", "Lt": "Lieutenant", "Col": "Colonel",
    "Gen": "General", "Gov": "Governor", "Rev": "Reverend", "Hon": "Honorable",
    "Mt": "Mount", "Fr": "Father", "Cpl": "Corporal", "Adm": "Admiral", "Insp": "Inspector",
}  # fmt: skip
# Other abbreviations may end a sentence: their period stays when a capital follows.
_ABBREVIATIONS: Final = {
    "etc.": "et cetera", "vs.": "versus", "vs": "versus", "e.g.": "for example",
    "i.e.": "that is", "approx.": "approximately", "Jr.": "Junior", "Sr.": "Senior",
    "Ave.": "Avenue", "Rd.": "Road", "Blvd.": "Boulevard", "Lv.": "level", "Lvl.": "level",
    "a.m.": "A M", "p.m.": "P M", "A.M.": "A M", "P.M.": "P M",
}  # fmt: skip
_CURRENCIES: Final = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}
_UNITS: Final = {
    "km/h": ("kilometer per hour", "kilometers per hour"),
    "mph": ("mile per hour", "miles per hour"),
    "km": ("kilometer", "kilometers"), "kg": ("kilogram", "kilograms"),
    "cm": ("centimeter", "centimeters"), "mm": ("millimeter", "millimeters"),
    "lb": ("pound", "pounds"), "lbs": ("pound", "pounds"), "oz": ("ounce", "ounces"),
    "ft": ("foot", "feet"), "hrs": ("hour", "hours"), "mins": ("minute", "minutes"),
}  # fmt: skip
_FRACTIONS: Final = {
    "1/2": "one half", "1/3": "one third", "2/3": "two thirds", "1/4": "one quarter",
    "3/4": "three quarters", "1/8": "one eighth", "½": "one half", "¼": "one quarter",
    "¾": "three quarters", "⅓": "one third", "⅔": "two thirds",
}  # fmt: skip
_MONTHS: Final = (
    "January|February|March|April|May|June|July|August|September|October|November|December"
)

_TITLE = re.compile(r"\b(" + "|".join(_TITLES) + r")\.(?=\s+\w)")
_ABBREVIATION = re.compile(
    r"(?<![\w.])(" + "|".join(re.escape(a) for a in _ABBREVIATIONS) + r")(?=(\s+\S)|[,;:!?)]|$)"
)
_SAINT_OR_STREET = re.compile(r"\bSt\.(?=\s+(\S))")
_NUMBER_SIGN = re.compile(r"(?<!\w)#\s?(\d+)")
_NO_NUMBER = re.compile(r"\b[Nn]o\.\s?(?=\d)")
_CURRENCY = re.compile(
    r"([$£€¥])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{2}))?(?:\s?(thousand|million|billion|[kK]|[mM]))?\b"
)
_UNIT = re.compile(
    r"\b(\d+(?:\.\d+)?)\s?("
    + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?![\w/])"
)
_TIMES = re.compile(r"(?<![\w.])(?:[xX×]\s?(\d+)\b|(\d+)[xX×](?!\w))")
_FRACTION = re.compile(r"(?<![\d/])(" + "|".join(re.escape(f) for f in _FRACTIONS) + r")(?![\d/])")
_THOUSANDS = re.compile(r"\b\d{1,3}(?:,\d{3})+\b")
_YEAR_AFTER = re.compile(
    r"\b(?:(?i:in|of|since|until|till|by|from|year|circa|around|before|after|during)"
    r"|(?:" + _MONTHS + r")(?: \d{1,2})?,?) (1[1-9]\d\d|20[1-9]\d)\b(?![.,]\d|%)"
)
_YEAR_ERA = re.compile(r"\b(1[1-9]\d\d|20[1-9]\d)(?=\s?(?:AD|BC|BCE|CE)\b)")
_ELLIPSIS = re.compile(r"\s*(?:\.{3,}|…)\s*")
_DASH = re.compile(r"(?<=\w)\s*(?:—|–|--)\s*(?=\w)|(?<=\w)\s+-\s+(?=\w)")


def read_english(text: Tracked) -> Tracked:
    """Rewrite what espeak-ng would misread; the result still tracks the original."""
    text = text.sub(_ELLIPSIS, _ellipsis)
    text = text.sub(_DASH, ", ")
    text = text.sub(_SAINT_OR_STREET, _saint_or_street)
    text = text.sub(_TITLE, lambda m: _TITLES[m.group(1)])
    text = text.sub(_ABBREVIATION, _abbreviation)
    text = text.sub(_NO_NUMBER, "number ")
    text = text.sub(_NUMBER_SIGN, lambda m: f"number {m.group(1)}")
    text = text.sub(_CURRENCY, _currency)
    text = text.sub(_UNIT, _unit)
    text = text.sub(
        _TIMES, lambda m: f"times {m.group(1)}" if m.group(1) else f"{m.group(2)} times"
    )
    text = text.sub(_FRACTION, lambda m: _FRACTIONS[m.group(1)])
    text = text.sub(_YEAR_AFTER, _year, group=1)
    text = text.sub(_YEAR_ERA, _year, group=1)
    return text.sub(_THOUSANDS, lambda m: m.group(0).replace(",", ""))


def _ellipsis(match: re.Match[str]) -> str:
    at_end = match.end() == len(match.string)
    at_start = match.start() == 0
    if at_end:
        return "."
    if at_start:
        return ""
    if match.string[: match.start()].rstrip()[-1:] in (",", ";", ":", ".", "!", "?"):
        return " "  # "Well, [name]... I" once the name is gone: the comma is the pause
    # Before a capital the ellipsis ends a sentence; inside one it is a pause.
    return ". " if match.string[match.end()].isupper() else ", "


def _saint_or_street(match: re.Match[str]) -> str:
    # "St. James" is Saint James; "Baker St. is" is Baker Street.
    return "Saint" if match.group(1)[0].isupper() else "Street"


def _abbreviation(match: re.Match[str]) -> str:
    words = _ABBREVIATIONS[match.group(1)]
    following = match.group(2)
    if match.group(1).endswith(".") and (following is None and match.end() == len(match.string)):
        return words + "."
    if following is not None and following.strip()[0].isupper():
        return words + "." if match.group(1).endswith(".") else words
    return words


def _currency(match: re.Match[str]) -> str:
    symbol, whole, cents, scale = match.groups()
    one, many, cent, cents_word = _CURRENCIES[symbol]
    amount = whole.replace(",", "")
    if scale:
        scale_word = {"k": "thousand", "m": "million"}.get(scale.lower(), scale)
        return f"{amount}{'.' + cents if cents else ''} {scale_word} {many}"
    spoken = f"{amount} {one if amount == '1' else many}"
    if cents and cents != "00":
        count = str(int(cents))
        spoken += f" and {count} {cent if count == '1' else cents_word}"
    return spoken


def _unit(match: re.Match[str]) -> str:
    number, unit = match.groups()
    one, many = _UNITS[unit]
    return f"{number} {one if number == '1' else many}"


def _year(match: re.Match[str]) -> str:
    year = match.group(1)
    century, rest = year[:2], year[2:]
    if rest == "00":
        return f"{century} hundred"
    if rest[0] == "0":
        return f"{century} oh {rest[1]}"
    return f"{century} {rest}"
