"""Splitting a sentence's phonemes into pieces that can be synthesized one at a time.

Piper synthesizes a whole sentence in one ONNX call, so a long sentence's first audio waits
for all of it. Cutting at clause boundaries (",", ";", ":" and dashes, which espeak-ng marks
with those) costs little in prosody: each piece ends the way the model ends a clause. A run-on
clause is cut at the word boundary nearest its middle, and the first piece of a line is kept
short so that the first audio comes soon.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FIRST_PIECE_MAX", "MAX_PIECE", "MIN_PIECE", "split_sentence"]

CLAUSE_MARKS: Final = frozenset({",", ";", ":"})
MIN_PIECE: Final = 12
"""Phonemes: a shorter clause joins the next one (it would sound choppy on its own)."""
MAX_PIECE: Final = 110
"""Phonemes (~15 words): a longer clause is cut at a word boundary."""
FIRST_PIECE_MAX: Final = 48
"""Phonemes (~7 words): a line's first piece, synthesized while the player waits."""


def split_sentence(phonemes: list[str], *, first: bool = False) -> list[list[str]]:
    """Cut one sentence's phonemes into pieces; ``first`` if it opens the line."""
    pieces = _merge_short(_clauses(phonemes))
    result: list[list[str]] = []
    for piece in pieces:
        limit = FIRST_PIECE_MAX if first and not result else MAX_PIECE
        result.extend(_cap(piece, limit))
    return result


def _clauses(phonemes: list[str]) -> list[list[str]]:
    clauses: list[list[str]] = [[]]
    for index, phoneme in enumerate(phonemes):
        clauses[-1].append(phoneme)
        at_mark = phoneme in CLAUSE_MARKS
        if at_mark and index + 1 < len(phonemes) and phonemes[index + 1] == " ":
            continue  # the space after the mark belongs to this clause
        if at_mark or (phoneme == " " and index > 0 and phonemes[index - 1] in CLAUSE_MARKS):
            clauses.append([])
    return [clause for clause in clauses if clause]


def _merge_short(clauses: list[list[str]]) -> list[list[str]]:
    merged: list[list[str]] = []
    for clause in clauses:
        if merged and _spoken_length(merged[-1]) < MIN_PIECE:
            merged[-1] = merged[-1] + clause
        else:
            merged.append(clause)
    if len(merged) > 1 and _spoken_length(merged[-1]) < MIN_PIECE:
        merged[-2:] = [merged[-2] + merged[-1]]
    return merged


def _cap(piece: list[str], limit: int) -> list[list[str]]:
    """Cut ``piece`` at word boundaries until every part is at most ``limit`` long."""
    if len(piece) <= limit:
        return [piece]
    spaces = [i for i, phoneme in enumerate(piece) if phoneme == " " and 0 < i < len(piece) - 1]
    if not spaces:
        return [piece]  # one enormous word: nothing sensible to cut
    target = min(limit, len(piece) // 2) if limit == MAX_PIECE else limit * 3 // 4
    cut = min(spaces, key=lambda i: abs(i - target)) + 1
    head, tail = piece[:cut], piece[cut:]
    if len(head) > limit:
        return _cap(head, limit) + _cap(tail, MAX_PIECE)
    return [head, *_cap(tail, MAX_PIECE)]


def _spoken_length(piece: list[str]) -> int:
    return sum(1 for phoneme in piece if phoneme != " " and phoneme not in CLAUSE_MARKS)
