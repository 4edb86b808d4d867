"""Text that remembers where each of its characters came from in the client's original line.

Markup stripping and reading rules rewrite a line ("{b}Dr.{/b} Hale" becomes "Doctor Hale");
timing events must still point into the text the client sent, so that a game reveals exactly
those characters. ``Tracked`` does every rewrite through ``sub``, carrying, for each output
character, the [start, end) span of the original text it stands for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Spoken", "Tracked"]


class Spoken(str):
    """A text part to speak: a plain ``str`` (compares and hashes as its text) that also
    knows the original [start, end) span of each character, in ``starts`` and ``ends``."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def __new__(cls, text: str, starts: tuple[int, ...], ends: tuple[int, ...]) -> Spoken:
        spoken = super().__new__(cls, text)
        spoken.starts = starts
        spoken.ends = ends
        return spoken

    def origin(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text behind this text's [start, end)."""
        if not self or start >= end:
            anchor = self.starts[min(start, len(self) - 1)] if self else 0
            return anchor, anchor
        return min(self.starts[start:end]), max(self.ends[start:end])


@dataclass(frozen=True)
class Tracked:
    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> Tracked:
        """Original text: each character stands for itself."""
        return cls(text, tuple(range(len(text))), tuple(range(1, len(text) + 1)))

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, index: slice) -> Tracked:
        return Tracked(self.text[index], self.starts[index], self.ends[index])

    def replaced(self, text: str) -> Tracked:
        """``text`` standing for all of this (e.g. "Doctor" for "Dr.")."""
        if not self.text:
            return Tracked(text, (0,) * len(text), (0,) * len(text))
        start, end = min(self.starts), max(self.ends)
        return Tracked(text, (start,) * len(text), (end,) * len(text))

    def sub(
        self,
        pattern: re.Pattern[str],
        replacement: str | Callable[[re.Match[str]], str],
        group: int = 0,
    ) -> Tracked:
        """``pattern.sub``, with each replacement standing for the text it replaced.

        With ``group``, only that group of each match is replaced; the rest of the match
        is context (what Python's fixed-width look-behind cannot express).
        """
        pieces: list[Tracked] = []
        position = 0
        for match in pattern.finditer(self.text):
            start, end = match.span(group)
            if start < 0:
                continue
            new = replacement if isinstance(replacement, str) else replacement(match)
            if new == self.text[start:end]:
                continue
            pieces.append(self[position:start])
            matched = self[start:end]
            if not matched.text and new:  # an insertion: anchor it at its position
                anchor = (
                    self.starts[start] if start < len(self) else (self.ends[-1] if self.text else 0)
                )
                pieces.append(Tracked(new, (anchor,) * len(new), (anchor,) * len(new)))
            else:
                pieces.append(matched.replaced(new))
            position = end
        if not pieces:
            return self
        pieces.append(self[position:])
        return Tracked.join(pieces)

    @staticmethod
    def join(pieces: list[Tracked]) -> Tracked:
        return Tracked(
            "".join(piece.text for piece in pieces),
            tuple(start for piece in pieces for start in piece.starts),
            tuple(end for piece in pieces for end in piece.ends),
        )

    def strip(self) -> Tracked:
        start = len(self.text) - len(self.text.lstrip())
        end = len(self.text.rstrip())
        return self[start:end] if end > start else self[0:0]

    def spoken(self) -> Spoken:
        return Spoken(self.text, self.starts, self.ends)
