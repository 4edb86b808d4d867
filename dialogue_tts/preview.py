"""``dialogue-tts preview SCRIPT``: hear a scripted scene before any actor records it.

A script is one of:

- text (any other extension): ``NAME: line`` per line, ``NAME (style): line`` to pick a
  style of the cast, ``(pause 1.5)`` for a longer silence, blank lines and ``# comments``
  ignored;
- ``.json``: a list of ``{"speaker": ..., "text": ..., "style": ...}`` objects (style
  optional; ``{"pause": 1.5}`` for a silence);
- ``.csv``: a header row with ``speaker`` and ``text`` columns (and optionally ``style``).

The output folder gets the whole scene as one file with natural gaps between lines
(``scene.wav``), each line on its own (``lines/001-NAME.wav``), and subtitles with each
line's start and end in the scene (``scene.srt`` or ``scene.vtt``). Lines are rendered
in-process on every synthesis thread at once, through the cast and the disk cache, so a
second preview of an edited scene renders only the lines that changed.

The server's ``synthesize_scene`` request (the preview page's scene download) renders a scene
with the same two functions as this command: ``scene_jobs`` then ``render_scene``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

import numpy as np

from .app import build_engine, engine_options, load_cast_option, play_file, run_async
from .errors import RemoteProtocolError
from .messages import MAX_SCENE_PAUSE, InvalidMessage, SceneLine, Synthesize
from .progress import ProgressBar

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from .cast import Cast
    from .engine import Engine, SynthesisRequest
    from .jobs import Catalog, Limits

__all__ = [
    "Cue",
    "Scene",
    "SceneLineError",
    "SceneRenderError",
    "ScriptError",
    "ScriptLine",
    "add_parser",
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


def add_parser(commands: Any) -> None:
    """Register ``preview`` on the CLI's subcommands."""

    command = commands.add_parser(
        "preview",
        help="render a scripted scene: one mixed file, per-line files and subtitles",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    command.add_argument("script", type=Path, help="the scene: NAME: line text, .json or .csv")
    command.add_argument(
        "-o", "--output", type=Path,
        help="output folder (default: SCRIPT's name + '-preview', beside it)",
    )  # fmt: skip
    command.add_argument("--format", default="wav", choices=["wav", "ogg", "flac"])
    command.add_argument("--subtitles", default="srt", choices=["srt", "vtt"])
    command.add_argument(
        "--sample-rate", type=int,
        help="of the files (default: the highest of the scene's voices, e.g. 24000 with a "
        "Kokoro voice in the cast)",
    )  # fmt: skip
    command.add_argument("--markup", default="plain", choices=["plain", "renpy", "bbcode"])
    command.add_argument(
        "--gap", type=float,
        help=f"seconds between lines (default {SPEAKER_CHANGE_GAP} between speakers, "
        f"{SAME_SPEAKER_GAP} within one)",
    )  # fmt: skip
    command.add_argument("--play", action="store_true", help="play the scene when it is ready")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    engine_options(command)
    command.set_defaults(command=_main)


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


# --- rendering --------------------------------------------------------------------------


def _main(args: argparse.Namespace) -> int:

    try:
        lines = read_script(args.script)
    except ScriptError as exc:
        print(f"dialogue-tts preview: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output or args.script.with_name(args.script.stem + "-preview")
    progress = None if args.quiet else sys.stderr
    try:
        status = run_async(_preview(args, lines, output, progress))
    except ScriptError as exc:
        print(f"dialogue-tts preview: {exc}", file=sys.stderr)
        return 2
    if status == 0 and args.play:
        return play_file(output / f"scene.{args.format}")
    return status


async def _preview(
    args: argparse.Namespace, lines: list[ScriptLine], output: Path, progress: TextIO | None
) -> int:
    from .audio import encode_file

    engine = build_engine(args)
    failures: list[tuple[int, str]] = []
    try:
        cast = load_cast_option(args, engine.catalog)
        try:
            jobs = scene_jobs(lines, cast, engine.catalog, markup=args.markup,
                              sample_rate=args.sample_rate)  # fmt: skip
        except SceneLineError as exc:
            raise ScriptError(f"{lines[exc.index].where}: {exc}") from None
        sample_rate = scene_sample_rate(jobs)
        bar = ProgressBar(len(jobs), progress)

        def advance(index: int) -> None:
            bar.advance(f"{lines[index].speaker}: {lines[index].text}")

        try:
            scene = await render_scene(engine, lines, jobs, sample_rate, gap=args.gap,
                                       on_line=advance)  # fmt: skip
        except SceneRenderError as exc:
            failures = exc.failures
        finally:
            bar.close()
        await engine.finish_cache_writes()
    finally:
        engine.close()
    for index, why in failures:
        print(f"error: {lines[index].where}: {why}", file=sys.stderr)
    if failures:
        return 1
    (output / "lines").mkdir(parents=True, exist_ok=True)
    for number, (line, samples) in enumerate(zip(lines, scene.lines, strict=True), start=1):
        path = output / "lines" / f"{number:03d}-{_file_name(line.speaker)}.{args.format}"
        path.write_bytes(encode_file(samples, args.format, sample_rate))
    scene_path = output / f"scene.{args.format}"
    scene_path.write_bytes(encode_file(scene.audio, args.format, sample_rate))
    subtitles_path = output / f"scene.{args.subtitles}"
    subtitles_path.write_text(subtitles(scene.cues, args.subtitles), encoding="utf-8")
    print(
        f"wrote {scene_path} ({scene.duration:.1f} s, {len(lines)} lines), "
        f"{output / 'lines'}/ and {subtitles_path}",
        file=progress or sys.stdout,
    )
    return 0


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


def _file_name(speaker: str) -> str:
    return re.sub(r"[^\w-]+", "_", speaker).strip("_")[:40] or "line"
