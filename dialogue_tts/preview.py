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
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import numpy as np

from .progress import ProgressBar

__all__ = ["Cue", "ScriptError", "ScriptLine", "add_parser", "read_script", "subtitles"]

SPEAKER_CHANGE_GAP: Final = 0.45
"""Seconds between two speakers' lines: a turn in a conversation."""
SAME_SPEAKER_GAP: Final = 0.25
"""Seconds between two lines of one speaker: a breath."""
MAX_SCRIPT_PAUSE: Final = 30.0
_LINE = re.compile(
    r"^(?P<speaker>[^:()#][^:()]{0,63}?)\s*(?:\((?P<style>[\w -]+)\))?\s*:\s*(?P<text>.*)$"
)
_PAUSE = re.compile(r"^\(\s*pause\s+(?P<seconds>\d+(?:\.\d+)?)\s*s?\s*\)$", re.IGNORECASE)


class ScriptError(ValueError):
    """A script that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class ScriptLine:
    speaker: str
    text: str
    style: str | None = None
    pause_before: float = 0.0
    """Extra silence asked for by a ``(pause N)`` line before this one."""
    where: str = ""
    """"scene.txt:12", for messages."""


@dataclass(frozen=True)
class Cue:
    start: float
    end: float
    speaker: str
    text: str


def add_parser(commands: Any) -> None:
    """Register ``preview`` on the CLI's subcommands."""
    from .cli import engine_options

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
    command.add_argument("--sample-rate", type=int, help="of the files (default: the voice's)")
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
        lines.append(
            ScriptLine(
                match["speaker"].strip(), match["text"].strip(), match["style"], pause, where
            )
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
    from .cli import run_async

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
        from .cli import play_file

        return play_file(output / f"scene.{args.format}")
    return status


async def _preview(
    args: argparse.Namespace, lines: list[ScriptLine], output: Path, progress: TextIO | None
) -> int:
    from .audio import encode_file
    from .cli import build_engine, load_cast_option

    engine = build_engine(args)
    try:
        cast = load_cast_option(args, set(engine.catalog.names()))
        sample_rate = (
            args.sample_rate or engine.catalog.info(engine.catalog.default_voice).sample_rate
        )
        jobs = [_job(line, args.markup, sample_rate, cast, engine) for line in lines]
        bar = ProgressBar(len(jobs), progress)
        try:
            audio = await _render_all(engine, jobs, lines, bar)
        finally:
            bar.close()
    finally:
        engine.close()
    failures = [f"{line.where}: {result}" for line, result in zip(lines, audio, strict=True)
                if isinstance(result, str)]  # fmt: skip
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    if failures:
        return 1
    rendered: list[np.ndarray] = [a for a in audio if isinstance(a, np.ndarray)]
    scene, cues = mix(lines, rendered, sample_rate, args.gap)
    (output / "lines").mkdir(parents=True, exist_ok=True)
    for number, (line, samples) in enumerate(zip(lines, rendered, strict=True), start=1):
        path = output / "lines" / f"{number:03d}-{_file_name(line.speaker)}.{args.format}"
        path.write_bytes(encode_file(samples, args.format, sample_rate))
    scene_path = output / f"scene.{args.format}"
    scene_path.write_bytes(encode_file(scene, args.format, sample_rate))
    subtitles_path = output / f"scene.{args.subtitles}"
    subtitles_path.write_text(subtitles(cues, args.subtitles), encoding="utf-8")
    print(
        f"wrote {scene_path} ({len(scene) / sample_rate:.1f} s, {len(lines)} lines), "
        f"{output / 'lines'}/ and {subtitles_path}",
        file=progress or sys.stdout,
    )
    return 0


def _job(line: ScriptLine, markup: str, sample_rate: int, cast: Any, engine: Any) -> Any:
    from .errors import RemoteProtocolError
    from .jobs import DEFAULT_LIMITS, synthesis_request
    from .messages import InvalidMessage, Synthesize

    try:
        request = Synthesize(
            text=line.text, speaker=line.speaker, style=line.style, markup=markup,  # type: ignore[arg-type]
            sample_rate=sample_rate,
        )  # fmt: skip
        request.check()
        job, _ = synthesis_request(request, cast, engine.catalog, DEFAULT_LIMITS)
    except (InvalidMessage, RemoteProtocolError) as exc:
        raise ScriptError(f"{line.where}: {exc}") from None
    return job


async def _render_all(
    engine: Any, jobs: list[Any], lines: list[ScriptLine], bar: ProgressBar
) -> list[np.ndarray | str]:
    """Each line's audio, or the error that stopped it (one bad line loses no other)."""
    limit = asyncio.Semaphore(engine.workers)  # every synthesis thread busy, no more

    async def render(job: Any, line: ScriptLine) -> np.ndarray | str:
        async with limit:
            try:
                audio, _ = await engine.render(job)
            except Exception as exc:
                return str(exc) or type(exc).__name__
            finally:
                bar.advance(f"{line.speaker}: {line.text}")
        return audio

    return list(await asyncio.gather(*(render(j, ln) for j, ln in zip(jobs, lines, strict=True))))


def mix(
    lines: list[ScriptLine], audio: list[np.ndarray], sample_rate: int, gap: float | None = None
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
