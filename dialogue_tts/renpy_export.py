"""Reading a Ren'Py dialogue export (``dialogue.tab``), the launcher's "Extract Dialogue".

A header row, then one tab-separated row per line of dialogue with its Identifier, Character
(the character's variable name, empty for narration), Dialogue (text tags and
[interpolations] kept), Filename, Line Number and Ren'Py Script. ``renpy-render`` renders
these rows; ``words`` lists their words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

__all__ = ["HEADER", "DialogueLine", "ExportError", "read_dialogue_tab"]

HEADER: Final = ("Identifier", "Character", "Dialogue", "Filename", "Line Number", "Ren'Py Script")
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.-]+$")


class ExportError(ValueError):
    """The dialogue export or the voice mapping cannot be used."""


@dataclass(frozen=True)
class DialogueLine:
    identifier: str
    character: str
    text: str
    where: str  # "game/script.rpy:24", for messages


def read_dialogue_tab(path: Path) -> list[DialogueLine]:
    """The rows of a Ren'Py dialogue export; raises ExportError naming the bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 text ({exc.reason})") from None
    rows = text.splitlines()
    if not rows or tuple(rows[0].split("\t")) != HEADER:
        found = rows[0][:80] if rows else "an empty file"
        raise ExportError(
            f"{path}: not a Ren'Py dialogue export: the first line should be the header "
            f"{' | '.join(HEADER)} (tab-separated), found {found!r}. Export it with the "
            "launcher's Extract Dialogue (tab-delimited, not plain text), or "
            "`renpy GAMEDIR dialogue None`."
        )
    lines: list[DialogueLine] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[1:], start=2):
        if not row.strip():
            continue
        fields = row.split("\t")
        if len(fields) != len(HEADER):
            raise ExportError(
                f"{path}:{number}: expected {len(HEADER)} tab-separated columns, found "
                f"{len(fields)}"
            )
        identifier, character, dialogue, filename, line_number = fields[:5]
        if not _IDENTIFIER.match(identifier):
            raise ExportError(f"{path}:{number}: bad Identifier {identifier!r}")
        if identifier in seen:
            raise ExportError(
                f"{path}:{number}: Identifier {identifier} already on line {seen[identifier]}"
            )
        seen[identifier] = number
        where = f"{filename}:{line_number}"
        lines.append(DialogueLine(identifier, character.strip(), dialogue, where))
    return lines
