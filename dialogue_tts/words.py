"""``dialogue-tts words SCRIPT``: the words a voice may not know, before anything is recorded.

Reads a scene script (``preview``'s formats), a Ren'Py ``dialogue.tab`` or plain text (one
line per row), and lists each word that espeak-ng, which turns the voice's text into
phonemes, is likely to get wrong:

- it spells the word out letter by letter ("Tch" is "T C H");
- its dictionary does not have the word, and the word is capitalized where a sentence does
  not start (a name: "Aelindra", "Xal'thar");
- with ``--all``: any other word its dictionary does not have (espeak reads most ordinary
  words by spelling rules, so this list is long), such as a word only ever capitalized at
  the start of a sentence;

and every word the cast's lexicon covers. For each: how it will be said (phonemes), how
often it appears, the first line it is in, and the lexicon's entry. ``--out DIR`` writes a
short clip of each word; ``--play`` plays them.

What only the clips need (the engine's jobs, audio encoding) is imported inside ``_clips``,
for start-up time only.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TextIO

from . import espeak
from .app import build_engine, engine_options, load_cast_option, play_file, run_async
from .renpy_export import HEADER, read_dialogue_tab
from .scene import ScriptError, read_script
from .text import prepare
from .tracked import Spoken

__all__ = ["Word", "WordLine", "add_parser", "find_words", "read_lines"]

_WORD = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_SENTENCE_END = re.compile(r"[.!?…:][\"'”’)\]]*\s*$")
_CLIP_NAME = re.compile(r"[^\w-]+")
MAX_CLIPS: Final = 500


@dataclass(frozen=True)
class WordLine:
    """A line of the script: who says it, its text and where it is."""

    speaker: str | None
    text: str
    where: str
    markup: str = "plain"


@dataclass
class Word:
    """A word of the report."""

    word: str
    phonemes: str
    reason: str
    """Why it is listed: "spelled out", "name", "capitalized", "not in dictionary" or
    "lexicon"."""
    first: WordLine
    voice: str
    count: int = 0
    entry: str | None = None
    """The lexicon's value for it, if the lexicon covers it."""
    forms: set[str] = field(default_factory=set)


def add_parser(commands: Any) -> None:
    """Register ``words`` on the CLI's subcommands."""

    command = commands.add_parser(
        "words",
        help="list the words of a script the voice may not know, and how it will say them",
    )
    command.add_argument("script", type=Path, help="scene script, Ren'Py dialogue.tab or text")
    command.add_argument("--voice", help="say every line with this voice (else the cast's)")
    command.add_argument("--csv", action="store_true", help="write CSV instead of a table")
    command.add_argument(
        "--all", action="store_true",
        help="also list every lowercase word espeak's dictionary does not have",
    )  # fmt: skip
    command.add_argument("--out", type=Path, metavar="DIR", help="write a clip of each word")
    command.add_argument("--play", action="store_true", help="play a clip of each word")
    engine_options(command)
    command.set_defaults(command=_main)


def read_lines(path: Path) -> list[WordLine]:
    """The lines of a script, a dialogue.tab or a text file; raises ValueError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    first_row = text.split("\n", 1)[0].rstrip("\r")
    if tuple(first_row.split("\t")) == HEADER:
        return [
            WordLine(line.character or None, line.text, line.where, "renpy")
            for line in read_dialogue_tab(path)
        ]
    try:
        return [
            WordLine(line.speaker, line.text, line.where or path.name) for line in read_script(path)
        ]
    except ScriptError:
        if path.suffix.lower() in (".json", ".csv"):
            raise
    rows = enumerate(text.splitlines(), start=1)
    return [WordLine(None, row, f"{path.name}:{n}") for n, row in rows if row.strip()]


def find_words(
    lines: Sequence[WordLine],
    cast: Any,
    catalog: Any,
    voice: str | None = None,
    every: bool = False,
) -> list[Word]:
    """The report's words, in the order they first appear."""
    found: dict[tuple[str, str], Word] = {}
    for line in lines:
        info = catalog.info(voice or cast.resolve(line.speaker).voice or catalog.default_voice)
        book = cast.words(info)
        for part in prepare(line.text, line.markup, info.language):
            if not isinstance(part, Spoken):
                continue
            for match in _WORD.finditer(part):
                word = match.group()
                before = part[: match.start()]
                mid_sentence = bool(before.strip()) and not _SENTENCE_END.search(before)
                key = (info.name, word.casefold())
                listed = found.get(key)
                if listed is None:
                    listed = _judge(word, mid_sentence, info, book, line, every)
                    if listed is None:
                        continue
                    found[key] = listed
                elif listed.reason == "name?" and mid_sentence and word[0].isupper():
                    listed.reason = "name"
                listed.count += 1
                listed.forms.add(word)
    words = list(found.values())
    for word in words:  # capitalized only where a sentence starts: an ordinary word, mostly
        if word.reason == "name?":
            capitalized = every and all(form[0].isupper() for form in word.forms)
            word.reason = "capitalized" if capitalized else ""
    return [word for word in words if word.reason]


def _judge(
    word: str, mid_sentence: bool, info: Any, book: Any, line: WordLine, every: bool
) -> Word | None:
    entry = book.entry(word) if book else None
    if entry is not None:
        phonemes = book.phonemes(entry)
        return Word(word, phonemes, "lexicon", line, info.name, entry=entry.value)
    if not info.espeak_voice:
        return None
    said = espeak.lookup(info.espeak_voice, word)
    if said.spelled:
        reason = "spelled out"
    elif said.in_dictionary or (
        word[0].isupper() and espeak.lookup(info.espeak_voice, word.lower()).in_dictionary
    ):
        return None
    elif word[0].isupper():
        reason = "name" if mid_sentence else "name?"
    elif every:
        reason = "not in dictionary"
    else:
        return None
    return Word(word, said.phonemes, reason, line, info.name)


# --- output ---------------------------------------------------------------------------------

_COLUMNS: Final = ("word", "count", "said as", "lexicon", "why", "first line")


def _rows(words: Sequence[Word]) -> list[list[str]]:
    return [
        [
            w.word, str(w.count), f"/{w.phonemes}/", w.entry or "-",
            w.reason if w.reason != "lexicon" else "covered",
            f"{w.first.where}: {w.first.text.strip()}",
        ]
        for w in words
    ]  # fmt: skip


def write_csv(words: Sequence[Word], out: TextIO) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["word", "count", "phonemes", "lexicon", "why", "where", "first_line"])
    for w in words:
        writer.writerow(
            [w.word, w.count, w.phonemes, w.entry or "", w.reason, w.first.where, w.first.text]
        )


def write_table(words: Sequence[Word], out: TextIO, width: int = 120) -> None:
    rows = [[c.upper() for c in _COLUMNS], *_rows(words)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        line = "  ".join([*cells, row[-1]])
        out.write((line if len(line) <= width else line[: width - 1] + "…") + "\n")
    covered = sum(1 for w in words if w.entry is not None)
    out.write(f"\n{len(words)} words, {covered} covered by the lexicon\n")


# --- the command ----------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:
    lines = read_lines(args.script)
    run_async(_report(args, lines))
    return 0


async def _report(args: argparse.Namespace, lines: list[WordLine]) -> None:
    async with build_engine(args) as engine:
        cast = load_cast_option(args, engine.catalog)
        if args.voice is not None:
            engine.catalog.info(args.voice)
        words = find_words(lines, cast, engine.catalog, args.voice, args.all)
        if args.csv:
            write_csv(words, sys.stdout)
        else:
            write_table(words, sys.stdout)
        if args.out is not None or args.play:
            await _clips(engine, cast, words, args.out, args.play)


async def _clips(
    engine: Any, cast: Any, words: Sequence[Word], out: Path | None, play: bool
) -> None:
    import tempfile

    from .audio import encode_file
    from .jobs import DEFAULT_LIMITS, synthesis_request
    from .messages import Synthesize

    folder = out or Path(tempfile.mkdtemp(prefix="dialogue-tts-words-"))
    folder.mkdir(parents=True, exist_ok=True)
    for word in words[:MAX_CLIPS]:
        request = Synthesize(text=word.word + ".", voice=word.voice, speaker=word.first.speaker)
        job, _ = synthesis_request(request, cast, engine.catalog, DEFAULT_LIMITS)
        audio, rate = await engine.render(job)
        path = folder / f"{_CLIP_NAME.sub('_', word.word)}.wav"
        path.write_bytes(encode_file(audio, "wav", rate))
        if play:
            print(f"{word.word}: /{word.phonemes}/", flush=True)
            play_file(path)
    if out is not None:
        print(f"wrote {min(len(words), MAX_CLIPS)} clips to {out}")
