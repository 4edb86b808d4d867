"""The cast: which voice and delivery each speaker of a game gets, and their named styles.

A cast file is TOML (see ``examples/cast.toml``)::

    [default]                 # any speaker the cast does not name
    voice = "en_US-joe-medium"
    fallback = true           # a line whose voice fails is said in the server's default voice

    [styles.whisper]          # styles every speaker may use
    volume = 0.5
    noise_scale = 0.3

    [speakers.Guard]          # "Guard" is the speaker name the game sends
    pitch = 0.85
    styles.angry = { rate = 1.15, volume = 1.4, pitch = 1.05, noise_w = 1.0 }

    [lexicon]                 # how to say words, for every speaker (see lexicon.py)
    Aelindra = "ay-LIN-dra"
    "Xal'thar" = "/zˈælθɑːɹ/"

A speaker's unset keys come from ``[default]``. Rate, pitch and volume multiply: the
speaker's, then the style's, then the request's; ``noise_scale`` and ``noise_w`` are Piper's
own settings and the last one set wins. A game may send the same structure in its hello.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tomllib
from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from .engine import Delivery, VoiceInfo
from .lexicon import Lexicon, LexiconError, WordBook

__all__ = [
    "CAST_ENV",
    "DEFAULT_CAST",
    "MAX_CAST_SPEAKERS",
    "NOISE_FAMILIES",
    "Cast",
    "CastError",
    "Casting",
    "Character",
    "Style",
    "UnknownStyle",
    "load_cast",
]

CAST_ENV: Final = "DIALOGUE_TTS_CAST"
"""Environment variable naming a cast file, for ``serve`` when --cast is not given."""
MAX_CAST_SPEAKERS: Final = 1000
MAX_STYLES: Final = 64
RATE_RANGE: Final = (0.1, 10.0)
PITCH_RANGE: Final = (0.5, 2.0)
VOLUME_RANGE: Final = (0.0, 10.0)
NOISE_RANGE: Final = (0.0, 2.0)
_NAME_CHARS: Final = 256
NOISE_FAMILIES: Final = frozenset({"piper"})
"""Voice families that read ``noise_scale`` and ``noise_w`` (Piper's VITS noise inputs);
Kokoro has no such inputs: its lines ignore them, and a cast that sets them for one of its
voices is told so."""
_NOISE_KEYS: Final = ("noise_scale", "noise_w")

_LOGGER = logging.getLogger(__name__)


class CastError(ValueError):
    """A cast file or cast map that cannot be used; the message says where and why."""


class UnknownStyle(LookupError):
    """A request named a style that neither its speaker nor the shared styles define."""


@dataclass(frozen=True)
class Style:
    """A named preset. Rate, pitch and volume multiply; noise settings replace."""

    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0
    noise_scale: float | None = None
    noise_w: float | None = None


@dataclass(frozen=True)
class Character:
    """How one speaker sounds. ``None`` voice is the server's default voice."""

    voice: str | None = None
    speaker: str | int | None = None
    """Speaker of a multi-speaker voice, by name or id."""
    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0
    noise_scale: float | None = None
    noise_w: float | None = None
    fallback: bool = False
    styles: dict[str, Style] = field(default_factory=dict)


@dataclass(frozen=True)
class Casting:
    """What one line resolves to: the voice to use and how to say it."""

    voice: str | None
    delivery: Delivery
    volume: float
    fallback: bool
    speaker: str | int | None


@dataclass(frozen=True)
class Cast:
    default: Character = Character()
    speakers: dict[str, Character] = field(default_factory=dict)
    styles: dict[str, Style] = field(default_factory=dict)
    lexicon: Lexicon = field(default_factory=Lexicon)
    source: str = "built-in"
    """Where it came from (a path, "hello"), for messages."""

    def character(self, speaker: str | None) -> Character:
        """The speaker's entry: exact name, then case-insensitive, then ``[default]``."""
        if speaker is None:
            return self.default
        found = self.speakers.get(speaker)
        if found is None:
            folded = speaker.casefold()
            found = next(
                (entry for name, entry in self.speakers.items() if name.casefold() == folded),
                self.default,
            )
        return found

    def style_names(self, speaker: str | None) -> list[str]:
        return sorted({*self.styles, *self.character(speaker).styles})

    def resolve(
        self,
        speaker: str | None,
        style: str | None = None,
        *,
        voice: str | None = None,
        rate: float = 1.0,
        pitch: float = 1.0,
        volume: float = 1.0,
    ) -> Casting:
        """Combine the speaker's entry, a style and a request's own settings.

        Raises UnknownStyle. The results are clamped to the ranges the engine accepts, so
        that a loud style on a loud speaker saturates instead of failing the line.
        """
        character = self.character(speaker)
        preset = Style()
        if style is not None:
            preset = character.styles.get(style) or self.styles.get(style)  # type: ignore[assignment]
            if preset is None:
                known = ", ".join(self.style_names(speaker)) or "none"
                raise UnknownStyle(f"no style {style!r} for speaker {speaker!r} (known: {known})")
        delivery = Delivery(
            rate=_clamp(character.rate * preset.rate * rate, RATE_RANGE),
            pitch=_clamp(character.pitch * preset.pitch * pitch, PITCH_RANGE),
            noise_scale=_last(character.noise_scale, preset.noise_scale),
            noise_w=_last(character.noise_w, preset.noise_w),
        )
        return Casting(
            voice=voice or character.voice,
            delivery=delivery,
            volume=_clamp(character.volume * preset.volume * volume, VOLUME_RANGE),
            fallback=character.fallback,
            speaker=character.speaker,
        )

    def to_dict(self) -> dict[str, Any]:
        """The cast as a map (the shape of the TOML file), for clients that query it."""
        return {
            "source": self.source,
            "default": _entry_dict(self.default),
            "styles": {name: _entry_dict(style) for name, style in self.styles.items()},
            "speakers": {name: _entry_dict(entry) for name, entry in self.speakers.items()},
            **({"lexicon": self.lexicon.to_dict()} if self.lexicon else {}),
        }

    def voices(self) -> set[str]:
        """The voices the cast names (its default's and its speakers')."""
        entries = [self.default, *self.speakers.values()]
        return {entry.voice for entry in entries if entry.voice is not None}

    def words(self, voice: VoiceInfo) -> WordBook:
        """The lexicon entries a line in ``voice`` uses."""
        return self.lexicon.book(voice.name, voice.language, voice.espeak_voice)

    @classmethod
    def from_toml(cls, text: str, source: str = "cast") -> Cast:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CastError(f"{source}: not valid TOML: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "cast") -> Cast:
        """Validate a parsed cast; raises CastError naming the bad key."""
        _only(data, {"default", "speakers", "styles", "lexicon"}, source)
        default = _character(data.get("default", {}), f"{source}: default", None)
        speakers_data = _table(data.get("speakers", {}), f"{source}: speakers")
        if len(speakers_data) > MAX_CAST_SPEAKERS:
            raise CastError(f"{source}: more than {MAX_CAST_SPEAKERS} speakers")
        speakers = {
            _name(name, f"{source}: speakers"): _character(
                entry, f"{source}: speakers.{name}", default
            )
            for name, entry in speakers_data.items()
        }
        styles = _styles(data.get("styles", {}), f"{source}: styles")
        try:
            lexicon = Lexicon.from_table(data.get("lexicon", {}), f"{source}: lexicon")
        except LexiconError as exc:
            raise CastError(str(exc)) from None
        return cls(
            default=default, speakers=speakers, styles=styles, lexicon=lexicon, source=source
        )

    def check_voices(self, known: Container[str], listed: Iterable[str] | None = None) -> None:
        """Raise CastError if an entry names a voice that is not in ``known`` (a set, or a
        catalog, which also knows voices made on request: blends); ``listed`` are the
        names the error suggests (default: ``known`` itself)."""
        entries = {"default": self.default} | {f"speakers.{n}": e for n, e in self.speakers.items()}
        for where, entry in entries.items():
            if entry.voice is not None and entry.voice not in known:
                names = listed if listed is not None else known
                suggestions = ", ".join(sorted(names)) if isinstance(names, Iterable) else ""
                raise CastError(
                    f"{self.source}: {where}.voice: no voice named {entry.voice!r} "
                    f"(known: {suggestions})"
                )

    def check(self, catalog: Any) -> None:
        """``check_voices`` against a ``VoiceCatalog``, and every lexicon entry's phonemes
        against the voices that may say it; raises CastError. Settings a voice ignores
        are logged (``ignored_settings``)."""
        self.check_voices(catalog, catalog.names())
        entries = [self.default, *self.speakers.values()]
        used = {entry.voice or catalog.default_voice for entry in entries}
        try:
            self.lexicon.check(catalog.infos(), used)
        except LexiconError as exc:
            raise CastError(str(exc)) from None
        for note in self.ignored_settings(catalog):
            _LOGGER.warning("%s", note)

    def ignored_settings(self, catalog: Any) -> list[str]:
        """Where the cast sets ``noise_scale`` or ``noise_w`` for a voice whose family has
        no such setting (a Kokoro voice): a note per entry, and one for the shared styles
        when an entry has such a voice (a shared style applies to every speaker)."""
        notes = []
        entries = {"default": self.default} | {f"speakers.{n}": e for n, e in self.speakers.items()}
        deaf: dict[str, str] = {}  # entry -> its voice, which ignores noise settings
        for where, entry in entries.items():
            voice = entry.voice or catalog.default_voice
            if catalog.info(voice).family in NOISE_FAMILIES:
                continue
            deaf[where] = voice
            keys = _noise_keys(entry, *entry.styles.values())
            if keys:
                notes.append(f"{self.source}: {where}: {'/'.join(keys)} ignored: "
                             f"{voice} has no such setting (only Piper voices do)")  # fmt: skip
        keys = _noise_keys(*self.styles.values())
        if keys and deaf:
            names = ", ".join(sorted(deaf))
            notes.append(f"{self.source}: styles: {'/'.join(keys)} ignored for {names}: "
                         "their voices have no such setting (only Piper voices do)")  # fmt: skip
        return notes


DEFAULT_CAST: Final = Cast()
"""No cast file: every speaker gets the server's default voice, as it is."""


def load_cast(path: Path) -> Cast:
    """Read a cast file; raises CastError (also for a file that cannot be read)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CastError(f"cannot read cast file {path}: {exc}") from None
    return Cast.from_toml(text, str(path))


def _noise_keys(*entries: Character | Style) -> list[str]:
    """The noise settings any of ``entries`` sets."""
    return [key for key in _NOISE_KEYS if any(getattr(e, key) is not None for e in entries)]


# --- validation -------------------------------------------------------------------------

_STYLE_KEYS: Final = {"rate", "pitch", "volume", "noise_scale", "noise_w"}
_CHARACTER_KEYS: Final = _STYLE_KEYS | {"voice", "speaker", "fallback", "styles"}
_RANGES: Final = {
    "rate": RATE_RANGE, "pitch": PITCH_RANGE, "volume": VOLUME_RANGE,
    "noise_scale": NOISE_RANGE, "noise_w": NOISE_RANGE,
}  # fmt: skip


def _character(data: Any, where: str, parent: Character | None) -> Character:
    table = _table(data, where)
    _only(table, _CHARACTER_KEYS, where)
    values: dict[str, Any] = {}
    for key in _STYLE_KEYS & table.keys():
        values[key] = _number(table[key], f"{where}.{key}", _RANGES[key])
    if "voice" in table:
        values["voice"] = _name(table["voice"], f"{where}.voice")
    if "speaker" in table:
        speaker = table["speaker"]
        if isinstance(speaker, bool) or not isinstance(speaker, str | int):
            raise CastError(f"{where}.speaker: expected a speaker name or id")
        values["speaker"] = speaker
    if "fallback" in table:
        if not isinstance(table["fallback"], bool):
            raise CastError(f"{where}.fallback: expected true or false")
        values["fallback"] = table["fallback"]
    values["styles"] = _styles(table.get("styles", {}), f"{where}.styles")
    if parent is not None:  # unset keys come from [default]; styles are looked up there too
        inherited = {f.name: getattr(parent, f.name) for f in dataclasses.fields(parent)}
        values = inherited | values
        values["styles"] = parent.styles | values["styles"]
    return Character(**values)


def _styles(data: Any, where: str) -> dict[str, Style]:
    table = _table(data, where)
    if len(table) > MAX_STYLES:
        raise CastError(f"{where}: more than {MAX_STYLES} styles")
    styles = {}
    for name, entry in table.items():
        style_table = _table(entry, f"{where}.{name}")
        _only(style_table, _STYLE_KEYS, f"{where}.{name}")
        styles[_name(name, where)] = Style(
            **{
                key: _number(value, f"{where}.{name}.{key}", _RANGES[key])
                for key, value in style_table.items()
            }
        )
    return styles


def _table(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise CastError(f"{where}: expected a table, got {type(data).__name__}")
    return dict(data)


def _only(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(str(key) for key in table if key not in allowed)
    if unknown:
        raise CastError(
            f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _number(value: Any, where: str, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CastError(f"{where}: expected a number")
    if not low <= value <= high:
        raise CastError(f"{where}: must be {low:g} to {high:g}, got {value:g}")
    return float(value)


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value) > _NAME_CHARS:
        raise CastError(f"{where}: names must be strings of 1 to {_NAME_CHARS} characters")
    return value


def _clamp(value: float, bounds: tuple[float, float]) -> float:
    return min(max(value, bounds[0]), bounds[1])


def _last(*values: float | None) -> float | None:
    return next((value for value in reversed(values) if value is not None), None)


def _entry_dict(entry: Character | Style) -> dict[str, Any]:
    data = {}
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        if f.name == "styles":
            value = {name: _entry_dict(style) for name, style in value.items()}
        if value is not None and value != f.default and value != {}:
            data[f.name] = value
    return data
