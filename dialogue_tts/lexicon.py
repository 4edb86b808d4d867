"""The writer's pronunciations: a lexicon of words and how the voice should say them.

In a cast file (``cast.py``)::

    [lexicon]                         # every speaker, every voice
    Aelindra = "ay-LIN-dra"           # a respelling
    "Xal'thar" = "/zˈælθɑːɹ/"         # phonemes in the voice's own alphabet (espeak IPA)
    US = "/jˌuːˈɛs/"                  # own case: only "US" matches, not "us"

    [lexicon.language.fr]             # voices whose language is French (fr, fr_FR...)
    Aelindra = "/ɛlindʁa/"

    [lexicon.voice."en_US-joe-medium"]  # one voice
    Nggh = "ng-GUH"

Keys are one word each, matched whole-word. A key in lowercase, or capitalized ("Aelindra"),
matches the word in any case ("AELINDRA!"); a key with capitals elsewhere ("US", "McKay",
"iPhone") matches only as written. A possessive "'s" after a word keeps the entry.
A voice's entry wins over its language's, which wins over the common ones.

A respelling is syllables joined by hyphens, the stressed one in capitals ("ay-LIN-dra").
Each syllable is read the way the voice reads it as an English-like word; the vowel keys
"ay" (day), "ee" (see), "eye", "oh", "oo" (food), "ow" (cow), "oy" (boy), "aw" (law),
"ah" (father) and "uh" (the "a" of "sofa" when unstressed) are read as those sounds. A
respelling without hyphens is read exactly as if the writer had typed it in the line.
Phonemes, between slashes, go to the voice as they are; each symbol must be in the voice's
phoneme set (its ``.onnx.json``), and stress marks (ˈ ˌ) go before the stressed vowel.

The entries a line uses become phonemes inside its text (``[[...]]``, Piper's raw-phoneme
blocks) through ``Tracked.sub``, so word marks still point at the writer's characters and a
line's cache key changes exactly when an entry it uses changes.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from . import espeak
from .tracked import Tracked

__all__ = [
    "MAX_ENTRIES",
    "Entry",
    "Lexicon",
    "LexiconError",
    "WordBook",
    "changed_words",
    "phonemize_blocks",
    "respell",
]

MAX_ENTRIES: Final = 10_000
"""Entries in one lexicon, all tables together."""
MAX_KEY_CHARS: Final = 64
MAX_VALUE_CHARS: Final = 128
_WORD = re.compile(r"\w+(?:['’-]\w+)*")
_RESPELLING = re.compile(r"[^\W\d_]+(?:['’-][^\W\d_]+)*")
_STRESS: Final = "ˈˌ"
_VOWELS: Final = frozenset("aeiouyɑɐɒæɔəɘɚɛɜɝɞɨɪʊʉʌʏøœɤɯɵᵻ")
_ENGLISH_VOWEL_KEYS: Final = {
    "ay": "eɪ", "ee": "iː", "eye": "aɪ", "igh": "aɪ", "oh": "oʊ", "oo": "uː", "ow": "aʊ",
    "oy": "ɔɪ", "aw": "ɔː", "ah": "ɑː", "uh": "ʌ",
}  # fmt: skip


class LexiconError(ValueError):
    """A lexicon entry that cannot be used; the message names its file, key and reason."""


@dataclass(frozen=True)
class Entry:
    """One word and how to say it."""

    key: str
    value: str
    where: str = field(default="lexicon", compare=False)
    """The file and table it came from, e.g. "cast.toml: lexicon", for messages."""

    @property
    def phonemes(self) -> str | None:
        """The phonemes of a ``/.../`` value (NFD, as espeak's are); None for a respelling."""
        if len(self.value) > 2 and self.value.startswith("/") and self.value.endswith("/"):
            return unicodedata.normalize("NFD", self.value[1:-1])
        return None

    @property
    def case_sensitive(self) -> bool:
        """Whether the key has capitals of its own ("US", "McKay"), beyond a leading one."""
        return self.key[1:] != self.key[1:].lower()

    def to_dict(self) -> dict[str, str]:
        return {self.key: self.value}


@dataclass(frozen=True)
class Lexicon:
    """A cast's entries: common ones, and tables for one language or one voice."""

    common: tuple[Entry, ...] = ()
    languages: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    voices: Mapping[str, tuple[Entry, ...]] = field(default_factory=dict)
    line: tuple[Entry, ...] = ()
    """A request's own entries (``say.lexicon``), over every table."""
    _books: dict[tuple[str, str, str], WordBook] = field(
        default_factory=dict, compare=False, repr=False
    )
    """``book``'s results: one compiled pattern per voice, not one per line."""

    def __bool__(self) -> bool:
        return bool(self.common or self.languages or self.voices or self.line)

    def with_line(self, table: Mapping[str, Any], where: str) -> Lexicon:
        """This lexicon, with a request's own entries winning; raises LexiconError."""
        return dataclasses.replace(self, line=_entries(_table(table, where), where), _books={})

    @classmethod
    def from_table(cls, data: Any, where: str) -> Lexicon:
        """Validate a ``[lexicon]`` table (see the module docstring); raises LexiconError."""
        table = _table(data, where)
        common: list[Entry] = []
        languages: dict[str, tuple[Entry, ...]] = {}
        voices: dict[str, tuple[Entry, ...]] = {}
        for key, value in table.items():
            if key in ("language", "voice") and isinstance(value, Mapping):
                scopes = languages if key == "language" else voices
                for scope, entries in _table(value, f"{where}.{key}").items():
                    scope_where = f"{where}.{key}.{_quoted(scope)}"
                    scopes[str(scope)] = _entries(_table(entries, scope_where), scope_where)
            else:
                common.extend(_entries({key: value}, where))
        lexicon = cls(tuple(common), languages, voices)
        total = len(common) + sum(len(e) for e in (*languages.values(), *voices.values()))
        if total > MAX_ENTRIES:
            raise LexiconError(f"{where}: more than {MAX_ENTRIES} entries")
        return lexicon

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {entry.key: entry.value for entry in self.common}
        for name, scopes in (("language", self.languages), ("voice", self.voices)):
            if scopes:
                data[name] = {
                    scope: {entry.key: entry.value for entry in entries}
                    for scope, entries in scopes.items()
                }
        return data

    def entries_for(self, voice: str, language: str) -> tuple[Entry, ...]:
        """The entries a voice uses, later tables overriding earlier ones."""
        chosen: dict[str, Entry] = {}
        matching = [s for s in self.languages if _language_matches(s, language)]
        tables = [self.common]
        tables += [self.languages[s] for s in sorted(matching, key=len)]
        tables += [self.voices.get(voice, ()), self.line]
        for table in tables:
            for entry in table:
                chosen[entry.key if entry.case_sensitive else entry.key.casefold()] = entry
        return tuple(chosen.values())

    def book(self, voice: str, language: str, espeak_voice: str) -> WordBook:
        """The entries ``entries_for`` gives, ready to rewrite lines (made once per voice)."""
        key = (voice, language, espeak_voice)
        found = self._books.get(key)
        if found is None:
            found = self._books[key] = WordBook(self.entries_for(voice, language), espeak_voice)
        return found

    def check(self, voices: Iterable[Any], used: Iterable[str]) -> None:
        """Raise LexiconError for phonemes a voice that may use them cannot say.

        ``voices`` are the catalog's ``VoiceInfo``s; ``used`` names the voices the cast
        speaks with (the common entries are checked against those); a language or voice
        table is checked against every voice of the catalog it applies to.
        """
        infos = {info.name: info for info in voices}
        for name in self.voices:
            if name not in infos:
                known = ", ".join(sorted(infos))
                raise LexiconError(
                    f"{_where_of(self.voices[name])}: no voice named {name!r} (known: {known})"
                )
        reach: list[tuple[tuple[Entry, ...], list[Any]]] = [
            (self.common, [infos[name] for name in used if name in infos])
        ]
        reach += [
            (entries, [i for i in infos.values() if _language_matches(scope, i.language)])
            for scope, entries in self.languages.items()
        ]
        reach += [(entries, [infos[name]]) for name, entries in self.voices.items()]
        for entries, reached in reach:
            for entry in entries:
                for info in reached:
                    _check_symbols(entry, info)


def _where_of(entries: tuple[Entry, ...]) -> str:
    return entries[0].where if entries else "lexicon"


class WordBook:
    """The entries one voice uses, ready to rewrite lines."""

    def __init__(self, entries: tuple[Entry, ...], espeak_voice: str) -> None:
        self.entries = entries
        self.espeak_voice = espeak_voice
        self._exact = {e.key: e for e in entries if e.case_sensitive}
        self._folded = {e.key.casefold(): e for e in entries if not e.case_sensitive}
        alternatives = [
            re.escape(e.key) if e.case_sensitive else f"(?i:{re.escape(e.key)})"
            for e in sorted(entries, key=lambda e: len(e.key), reverse=True)
        ]
        # Whole words: not inside a longer word, nor beside an apostrophe inside one
        # ("t" must not match in "don't"); a possessive "'s" after the word is fine.
        self._pattern = (
            re.compile(
                r"(?<![\w'’])(?<!\w['’])(?:" + "|".join(alternatives) + r")(?!\w)(?!['’](?!s\b)\w)"
            )
            if entries
            else None
        )

    def __bool__(self) -> bool:
        return bool(self.entries)

    def entry(self, word: str) -> Entry | None:
        return self._exact.get(word) or self._folded.get(word.casefold())

    def matches(self, text: str) -> list[tuple[int, int, Entry]]:
        """Where entries match in ``text``: start, end and the entry."""
        if self._pattern is None:
            return []
        found = []
        for match in self._pattern.finditer(text):
            entry = self.entry(match.group())
            if entry is not None:
                found.append((match.start(), match.end(), entry))
        return found

    def check(self, info: Any) -> None:
        """Raise LexiconError for phonemes of these entries that the voice cannot say."""
        for entry in self.entries:
            _check_symbols(entry, info)

    def phonemes(self, entry: Entry) -> str:
        """What the voice is given for the entry: its phonemes, or its respelling's."""
        return entry.phonemes or respell(entry.value, self.espeak_voice)

    def apply(self, text: Tracked) -> Tracked:
        """The text with each matched word replaced by its phonemes (a ``[[...]]`` block)."""
        if self._pattern is None:
            return text

        def replace(match: re.Match[str]) -> str:
            entry = self.entry(match.group())
            return match.group() if entry is None else f"[[{self.phonemes(entry)}]]"

        return text.sub(self._pattern, replace)


def changed_words(parts: Iterable[Any]) -> list[tuple[int, int, str]]:
    """Where a prepared line's parts say lexicon phonemes: the original [start, end) of each
    word, and the phonemes (``parts`` from ``text.prepare``; plain str parts are skipped)."""
    found = []
    for part in parts:
        if not hasattr(part, "origin"):
            continue
        for match in _BLOCK.finditer(part):
            start, end = part.origin(match.start(), match.end())
            found.append((start, end, unicodedata.normalize("NFC", match.group(1))))
    return found


def respell(respelling: str, espeak_voice: str) -> str:
    """The phonemes of a respelling such as "ay-LIN-dra" (see the module docstring)."""
    syllables = re.split(r"-", respelling)
    if len(syllables) == 1:
        return espeak.phonemize(espeak_voice, respelling.lower())
    english = espeak_voice.startswith("en")
    stresses = [syllable.isupper() for syllable in syllables]
    if not any(stresses):
        stresses[0] = True
    said: list[str] = []
    primary_done = False
    for syllable, stressed in zip(syllables, stresses, strict=True):
        lower = syllable.lower()
        if english and lower in _ENGLISH_VOWEL_KEYS:
            ipa = _ENGLISH_VOWEL_KEYS[lower]
        else:
            ipa = espeak.phonemize(espeak_voice, lower)
        ipa = "".join(char for char in ipa if char not in _STRESS and not char.isspace())
        if not stressed:
            ipa = ipa.replace("ʌ", "ə") if english else ipa
            said.append(ipa)
            continue
        mark = "ˌ" if primary_done else "ˈ"
        primary_done = True
        vowel = next((i for i, char in enumerate(ipa) if char in _VOWELS), 0)
        said.append(ipa[:vowel] + mark + ipa[vowel:])
    return unicodedata.normalize("NFD", "".join(said))


_BLOCK = re.compile(r"\[\[(.*?)\]\]")
_LEADING = re.compile(r"[\s,;:.!?…\"'”’)\]]*")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*\s*$")


def phonemize_blocks(text: str, phonemize: Callable[[str], list[list[str]]]) -> list[list[str]]:
    """``phonemize(text)`` (Piper's: sentences of phonemes), with each ``[[...]]`` block
    given as its own phonemes.

    Piper reads such blocks itself, but phonemizes the text between them with no context:
    espeak drops the punctuation that opens a piece of text (", and she left" loses its
    comma and pause) and a sentence end between two blocks. Here the text between blocks
    is phonemized as Piper would, and the punctuation and spaces around each block are
    kept as espeak marks them (a clause mark and a space; a sentence end).
    """
    if "[[" not in text:
        return phonemize(text)
    sentences: list[list[str]] = [[]]
    position = 0
    for match in _BLOCK.finditer(text):
        _extend(sentences, text[position : match.start()], phonemize)
        sentences[-1].extend(unicodedata.normalize("NFD", match.group(1).strip()))
        position = match.end()
    _extend(sentences, text[position:], phonemize)
    return [sentence for sentence in sentences if sentence]


def _extend(
    sentences: list[list[str]], text: str, phonemize: Callable[[str], list[list[str]]]
) -> None:
    lead = _LEADING.match(text)
    for char in lead.group() if lead else "":
        current = sentences[-1]
        if char in ",;:":
            current.extend([char, " "])
        elif char in ".!?":
            current.append(char)
            sentences.append([])
        elif char.isspace() and current and current[-1] != " ":
            current.append(" ")
    rest = text[lead.end() if lead else 0 :]
    if not rest.strip():
        return
    said = phonemize(rest)
    if said:
        sentences[-1].extend(said[0])
        sentences.extend(said[1:])
    if _SENTENCE_END.search(rest):
        sentences.append([])
    elif rest[-1:].isspace() and sentences[-1] and sentences[-1][-1] != " ":
        sentences[-1].append(" ")


# --- validation -------------------------------------------------------------------------


def _entries(table: Mapping[str, Any], where: str) -> tuple[Entry, ...]:
    entries = []
    for key, value in table.items():
        entry = Entry(str(key), value, where) if isinstance(value, str) else None
        at = f"{where}: {_quoted(str(key))}"
        if entry is None:
            raise LexiconError(f"{at}: expected a respelling or /phonemes/ (a string)")
        _check_entry(entry, at)
        entries.append(entry)
    return tuple(entries)


def _check_entry(entry: Entry, at: str) -> None:
    key, value = entry.key, entry.value
    if not key.strip():
        raise LexiconError(f"{at}: empty key")
    if any(char.isspace() for char in key):
        raise LexiconError(f"{at}: a key is one word; no spaces")
    if len(key) > MAX_KEY_CHARS or not _WORD.fullmatch(key):
        raise LexiconError(
            f"{at}: a key is one word of letters and digits (apostrophes and hyphens "
            f"inside), at most {MAX_KEY_CHARS} characters"
        )
    if not value.strip() or value.strip() == "//":
        raise LexiconError(f"{at}: empty value")
    if len(value) > MAX_VALUE_CHARS:
        raise LexiconError(f"{at}: longer than {MAX_VALUE_CHARS} characters")
    phonemes = entry.phonemes
    if phonemes is not None:
        if any(char.isspace() for char in phonemes):
            raise LexiconError(f"{at}: phonemes for one word; no spaces")
        return
    if value.startswith("/") or value.endswith("/"):
        raise LexiconError(f"{at}: phonemes go between two slashes, e.g. /ˈeɪlɪndɹə/")
    if not _RESPELLING.fullmatch(value):
        raise LexiconError(
            f"{at}: a respelling is letters, syllables joined by hyphens (e.g. ay-LIN-dra); "
            "for phonemes write them between slashes"
        )


def _check_symbols(entry: Entry, info: Any) -> None:
    phonemes = entry.phonemes
    if phonemes is None or not info.phonemes:
        return
    unknown = sorted({char for char in phonemes if char not in info.phonemes})
    if unknown:
        shown = " ".join(f"{char!r} (U+{ord(char):04X})" for char in unknown)
        raise LexiconError(
            f"{entry.where}: {_quoted(entry.key)}: voice {info.name!r} has no phoneme {shown}"
        )


def _language_matches(scope: str, language: str) -> bool:
    scope, language = _language(scope), _language(language)
    return bool(scope) and (language == scope or language.startswith(scope + "_"))


def _language(code: str) -> str:
    return code.replace("-", "_").casefold()


def _table(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise LexiconError(f"{where}: expected a table, got {type(data).__name__}")
    return {str(key): value for key, value in data.items()}


def _quoted(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else repr(key)
