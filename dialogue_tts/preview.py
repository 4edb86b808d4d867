"""``dialogue-tts preview SCRIPT``: hear a scripted scene before any actor records it.

The script is text (``NAME: line`` or ``NAME (style): line``, ``(pause 1.5)``, ``# comments``),
JSON (a list of speaker/text/style objects) or CSV (speaker, text, style columns).

The output folder gets the whole scene as one file with natural gaps between lines
(``scene.wav``), each line on its own (``lines/001-NAME.wav``), and subtitles with each
line's start and end in the scene (``scene.srt`` or ``scene.vtt``). Lines are rendered
in-process on every synthesis thread at once, through the cast and the disk cache, so a
second preview of an edited scene renders only the lines that changed.

The scene itself (reading the script, rendering and mixing, subtitles) is ``scene.py``, which
the server's ``synthesize_scene`` request (the preview page's scene download) uses too.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any, TextIO

from .app import build_engine, engine_options, load_cast_option, play_file, run_async
from .audio import encode_file
from .progress import ProgressBar
from .scene import (
    SAME_SPEAKER_GAP,
    SPEAKER_CHANGE_GAP,
    SceneLineError,
    SceneRenderError,
    ScriptError,
    ScriptLine,
    read_script,
    render_scene,
    scene_jobs,
    scene_sample_rate,
    subtitles,
)

__all__ = ["add_parser"]


def add_parser(commands: Any) -> None:
    """Register ``preview`` on the CLI's subcommands."""

    command = commands.add_parser(
        "preview",
        help="render a scripted scene: one mixed file, per-line files and subtitles",
        description=" ".join(__doc__.split("\n\n")[1].split()),
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
    failures: list[tuple[int, str]] = []
    async with build_engine(args) as engine:  # closed once its disk-cache writes are done
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


def _file_name(speaker: str) -> str:
    return re.sub(r"[^\w-]+", "_", speaker).strip("_")[:40] or "line"
