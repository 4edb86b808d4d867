"""A scene: lines said by several speakers in turn, read from a script, rendered and mixed.

The scene model (``ScriptLine``), reading scripts (text, JSON, CSV), turning lines into
synthesis jobs through the cast (``scene_jobs``), rendering them on every synthesis thread
and mixing them into one track with natural gaps (``render_scene``), and subtitles of the
result. The ``preview`` command and the server's ``synthesize_scene`` request both use it, so
a scene sounds the same whichever way it is rendered.

A script is one of:

- text (any other extension): ``NAME: line`` per line, ``NAME (style): line`` to pick a
  style of the cast, ``(pause 1.5)`` for a longer silence, blank lines and ``# comments``
  ignored;
- ``.json``: a list of ``{"speaker": ..., "text": ..., "style": ...}`` objects (style
  optional; ``{"pause": 1.5}`` for a silence);
- ``.csv``: a header row with ``speaker`` and ``text`` columns (and optionally ``style``).
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from .errors import RemoteProtocolError
from .messages import MAX_SCENE_PAUSE, InvalidMessage, SceneLine, Synthesize

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .cast import Cast
    from .engine import Engine, SynthesisRequest
    from .jobs import Catalog, Limits

__all__ = [
    "SAME_SPEAKER_GAP",
    "SPEAKER_CHANGE_GAP",
    "Cue",
    "Scene",
    "SceneLineError",
    "SceneRenderError",
    "ScriptError",
    "ScriptLine",
    "mix",
    "read_script",
    "render_scene",
    "scene_jobs",
    "scene_sample_rate",
    "subtitles",
]

SPEAKER_CHANGE_GAP: Final = 0.45
"""Seconds between two speakers' lines: a turn in a conversation."""
SAME_SPEAKER_GAP: Final = 0.25
"""Seconds between two lines of one speaker: a breath."""
MAX_SCRIPT_PAUSE: Final = MAX_SCENE_PAUSE
_LINE = re.compile(
    r"^(?P<speaker>[^:()#][^:()]{0,63}?)\s*(?:\((?P<style>[\w -]+)\))?\s*:\s*(?P<text>.*)$"
)
_PAUSE = re.compile(r"^\(\s*pause\s+(?P<seconds>\d+(?:\.\d+)?)\s*s?\s*\)$", re.IGNORECASE)


class ScriptError(ValueError):
    """A script that cannot be read; the message names the file and line."""


class SceneLineError(ValueError):
    """A line of a scene that cannot be said as written (found before anything is rendered).

    ``index`` is the line's place in the scene (from 0), ``code`` a wire error code
    (``unknown_style``, ``unknown_voice``, ``text_too_long``...)."""

    def __init__(self, index: int, code: str, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.code = code


class SceneRenderError(RuntimeError):
    """Lines whose synthesis failed, as ``(index, why)``; every other line was rendered."""

    def __init__(self, failures: list[tuple[int, str]]) -> None:
        super().__init__("; ".join(f"line {index}: {why}" for index, why in failures))
        self.failures = failures


@dataclass(frozen=True)
class ScriptLine:
    speaker: str
    text: str
    style: str | None = None
    pause_before: float = 0.0
    """Extra silence asked for by a ``(pause N)`` line before this one."""
    where: str = ""
    """"scene.txt:12", for messages."""
    voice: str | None = None
    """Overrides the cast's voice; rate, pitch and volume multiply the cast's (as in a say)."""
    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0

    @classmethod
    def from_scene_line(cls, line: SceneLine) -> ScriptLine:
        """A line of a ``synthesize_scene`` request."""
        return cls(
            line.speaker, line.text, line.style, line.pause, voice=line.voice,
            rate=line.rate, pitch=line.pitch, volume=line.volume,
        )  # fmt: skip


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str


@dataclass(frozen=True)
class Scene:
    """A rendered scene: the mixed track, each line's audio, and each line's place in it."""

    audio: np.ndarray
    lines: list[np.ndarray]
    cues: list[Cue]
    sample_rate: int

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


# --- reading scripts --------------------------------------------------------------------


def read_script(path: Path) -> list[ScriptLine]:
    """The lines of a script; raises ScriptError naming the bad line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScriptError(f"cannot read {path}: {exc}") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        lines = _json_lines(text, path.name)
    elif suffix == ".csv":
        lines = _csv_lines(text, path.name)
    else:
        lines = _text_lines(text, path.name)
    if not lines:
        raise ScriptError(f"{path}: no lines to say")
    return lines


def _text_lines(text: str, name: str) -> list[ScriptLine]:
    lines: list[ScriptLine] = []
    pause = 0.0
    for number, row in enumerate(text.splitlines(), start=1):
        row = row.strip()
        where = f"{name}:{number}"
        if not row or row.startswith("#"):
            continue
        if match := _PAUSE.match(row):
            pause += _pause_seconds(float(match["seconds"]), where)
            continue
        match = _LINE.match(row)
        if match is None or not match["text"].strip():
            raise ScriptError(
                f"{where}: expected 'NAME: line' (or 'NAME (style): line', '(pause 1.5)', "
                f"'# comment'), found {row[:60]!r}"
            )
        style = (match["style"] or "").strip() or None  # "NAME ( angry ):" is "angry"
        lines.append(
            ScriptLine(match["speaker"].strip(), match["text"].strip(), style, pause, where)
        )
        pause = 0.0
    return lines


def _json_lines(text: str, name: str) -> list[ScriptLine]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScriptError(f"{name}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    if isinstance(data, dict):
        data = data.get("lines")
    if not isinstance(data, list):
        raise ScriptError(f'{name}: expected a list of lines (or {{"lines": [...]}})')
    lines: list[ScriptLine] = []
    pause = 0.0
    for index, entry in enumerate(data, start=1):
        where = f"{name}: entry {index}"
        if isinstance(entry, dict) and set(entry) == {"pause"}:
            seconds = entry["pause"]
            if isinstance(seconds, bool) or not isinstance(seconds, int | float):
                raise ScriptError(f"{where}: pause must be a number of seconds")
            pause += _pause_seconds(float(seconds), where)
            continue
        lines.append(_entry_line(entry, where, pause))
        pause = 0.0
    return lines


def _csv_lines(text: str, name: str) -> list[ScriptLine]:
    reader = csv.DictReader(text.splitlines())
    fields = {field.strip().lower(): field for field in reader.fieldnames or []}
    if "speaker" not in fields or "text" not in fields:
        raise ScriptError(f"{name}:1: the header needs 'speaker' and 'text' columns")
    lines = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        entry = {key: row.get(original) for key, original in fields.items()}
        if not entry.get("style"):
            entry.pop("style", None)
        lines.append(_entry_line({k: entry[k] for k in ("speaker", "text", "style") if k in entry},
                                 where, 0.0))  # fmt: skip
    return lines


def _entry_line(entry: Any, where: str, pause: float) -> ScriptLine:
    if not isinstance(entry, dict):
        raise ScriptError(f"{where}: expected an object with speaker and text")
    speaker, text, style = entry.get("speaker"), entry.get("text"), entry.get("style")
    if not isinstance(speaker, str) or not speaker.strip():
        raise ScriptError(f"{where}: speaker must be a non-empty string")
    if not isinstance(text, str) or not text.strip():
        raise ScriptError(f"{where}: text must be a non-empty string")
    if style is not None and not isinstance(style, str):
        raise ScriptError(f"{where}: style must be a string")
    return ScriptLine(speaker.strip(), text.strip(), style, pause, where)


def _pause_seconds(seconds: float, where: str) -> float:
    if not 0 <= seconds <= MAX_SCRIPT_PAUSE:
        raise ScriptError(f"{where}: a pause must be 0 to {MAX_SCRIPT_PAUSE:g} seconds")
    return seconds


# --- rendering and mixing -------------------------------------------------------------


def scene_jobs(
    lines: Sequence[ScriptLine],
    cast: Cast,
    catalog: Catalog,
    *,
    markup: str = "plain",
    sample_rate: int | None = None,
    limits: Limits | None = None,
) -> list[SynthesisRequest]:
    """Each line's synthesis job, through the cast, at one sample rate (the lines' voices may
    differ): ``sample_rate``, else the highest of the lines' voices, so that a Kokoro line
    (24 kHz) in a scene of Piper voices (22.05 kHz) keeps its whole band. Raises
    SceneLineError for the first line that cannot be said."""
    # Imported here, not above: jobs loads the engine (ONNX Runtime), and the CLI imports
    # this module (through preview) to build its --help, which should not wait for that.
    from .jobs import DEFAULT_LIMITS, synthesis_request

    jobs: list[tuple[SynthesisRequest, int]] = []  # and the voice's own rate
    for index, line in enumerate(lines):
        try:
            request = Synthesize(
                text=line.text, speaker=line.speaker, style=line.style, voice=line.voice,
                rate=line.rate, pitch=line.pitch, volume=line.volume,
                markup=markup, sample_rate=sample_rate,  # type: ignore[arg-type]
            )  # fmt: skip
            request.check()
            job, voice = synthesis_request(request, cast, catalog, limits or DEFAULT_LIMITS)
        except InvalidMessage as exc:
            raise SceneLineError(index, exc.code, str(exc)) from None
        except RemoteProtocolError as exc:
            raise SceneLineError(index, exc.code, exc.message) from None
        jobs.append((job, voice.sample_rate))
    rate = sample_rate or max(voice_rate for _, voice_rate in jobs)
    return [dataclasses.replace(job, sample_rate=rate) for job, _ in jobs]


def scene_sample_rate(jobs: Sequence[SynthesisRequest]) -> int:
    """The one sample rate of a scene's ``scene_jobs``."""
    rates = {job.sample_rate for job in jobs}
    rate = rates.pop() if len(rates) == 1 else None
    if rate is None:
        raise ValueError("not the jobs of one scene: no one sample rate")
    return rate


async def render_scene(
    engine: Engine,
    lines: Sequence[ScriptLine],
    jobs: Sequence[SynthesisRequest],
    sample_rate: int,
    *,
    gap: float | None = None,
    on_line: Callable[[int], None] | None = None,
) -> Scene:
    """Render the ``scene_jobs`` of ``lines`` on every synthesis thread at once (at
    background priority, so a server's playing lines come first) and mix them.

    ``on_line(index)`` is called as each line is done. Raises SceneRenderError naming every
    line that failed: one bad line stops no other.
    """
    limit = asyncio.Semaphore(engine.parallel_lines)  # every core busy, no more

    async def render(index: int, job: SynthesisRequest) -> np.ndarray | str:
        async with limit:
            try:
                audio, _ = await engine.render(job)
            except Exception as exc:
                return str(exc) or type(exc).__name__
            finally:
                if on_line is not None:
                    on_line(index)
        return audio

    results = await asyncio.gather(*(render(index, job) for index, job in enumerate(jobs)))
    failures = [(index, result) for index, result in enumerate(results) if isinstance(result, str)]
    if failures:
        raise SceneRenderError(failures)
    rendered = [result for result in results if isinstance(result, np.ndarray)]
    audio, cues = mix(lines, rendered, sample_rate, gap)
    return Scene(audio, rendered, cues, sample_rate)


def mix(
    lines: Sequence[ScriptLine],
    audio: Sequence[np.ndarray],
    sample_rate: int,
    gap: float | None = None,
) -> tuple[np.ndarray, list[Cue]]:
    """One track of the scene, with gaps between lines; and each line's place in it."""
    pieces: list[np.ndarray] = []
    cues: list[Cue] = []
    position = 0
    previous: str | None = None
    for line, samples in zip(lines, audio, strict=True):
        if previous is not None:
            pause = (
                gap
                if gap is not None
                else (SAME_SPEAKER_GAP if line.speaker == previous else SPEAKER_CHANGE_GAP)
            )
            silence = round((pause + line.pause_before) * sample_rate)
            pieces.append(np.zeros(silence, dtype=np.float32))
            position += silence
        start = position
        pieces.append(samples)
        position += len(samples)
        cues.append(Cue(start / sample_rate, position / sample_rate, line.speaker, line.text))
        previous = line.speaker
    return np.concatenate(pieces), cues


def subtitles(cues: list[Cue], kind: str = "srt") -> str:
    """SubRip (``srt``) or WebVTT (``vtt``) text with a cue per line."""
    if kind == "srt":
        blocks = [
            f"{number}\n{_timestamp(c.start, ',')} --> {_timestamp(c.end, ',')}\n"
            f"{c.speaker}: {c.text}\n"
            for number, c in enumerate(cues, start=1)
        ]
        return "\n".join(blocks)
    if kind == "vtt":
        blocks = [
            f"{_timestamp(c.start, '.')} --> {_timestamp(c.end, '.')}\n"
            f"<v {_vtt_escape(c.speaker)}>{_vtt_escape(c.text)}\n"
            for c in cues
        ]
        return "WEBVTT\n\n" + "\n".join(blocks)
    raise ValueError(f"unknown subtitle format {kind!r}")


def _timestamp(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
