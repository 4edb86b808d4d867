"""``dialogue-tts renpy-render``: pre-render a Ren'Py game's dialogue as voice files.

Ren'Py's launcher ("Extract Dialogue", or ``renpy GAMEDIR dialogue None``) writes
``dialogue.tab``: a header row, then one tab-separated row per line of dialogue with its
Identifier, Character (the character's variable name, empty for narration), Dialogue (text
tags and [interpolations] kept), Filename, Line Number and Ren'Py Script. This command writes
``OUTPUT/<Identifier>.ogg`` for each row, so that ``define config.auto_voice =
"voice/{id}.ogg"`` plays them with no further code.

Lines are rendered in-process with the engine, not through a running server: pre-rendering
is a batch job for a build step, so it should need no server, and the engine runs the lines
on all its synthesis threads at once. A manifest beside the files records what each file was
made from (text and voice settings), so a second run renders only what changed.

The engine, cast and jobs are imported inside the functions, for start-up time only (the CLI
imports this module to build its ``--help``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

from . import errors
from .app import (
    disk_cache_option,
    engine_options,
    run_async,
)
from .errors import RemoteProtocolError
from .messages import InvalidMessage, Synthesize
from .progress import ProgressBar
from .renpy_export import DialogueLine, ExportError, read_dialogue_tab

__all__ = ["DialogueLine", "ExportError", "add_parser", "read_dialogue_tab", "render_lines"]

MANIFEST_NAME: Final = ".dialogue-tts-render.json"
JOURNAL_NAME: Final = ".dialogue-tts-render.journal"
"""Lines finished since the manifest was last written, one JSON object each, appended as each
file is written: an interrupted render of thousands of lines resumes where it stopped, at the
cost of one short append per line (rewriting the whole manifest each time would grow with
the square of the game's size)."""
NARRATOR_KEY: Final = "narrator"
"""The mapping key for narration (rows whose Character is empty)."""
DEFAULT_KEY: Final = "default"
"""The mapping key for characters the mapping does not list."""
_SETTING_TYPES: Final = {
    "voice": str, "style": str, "rate": (int, float), "pitch": (int, float),
    "volume": (int, float),
}  # fmt: skip
_INTERPOLATION = re.compile(r"(?<!\[)\[[^\[\]]+\]")


@dataclass(frozen=True)
class VoiceSettings:
    """A mapping entry; None fields leave the cast's (or the default voice's) setting."""

    voice: str | None = None
    style: str | None = None
    rate: float = 1.0
    pitch: float = 1.0
    volume: float = 1.0


def add_parser(commands: Any) -> None:
    """Register ``renpy-render`` on the CLI's subcommands."""
    command = commands.add_parser(
        "renpy-render",
        help="pre-render a Ren'Py dialogue export (dialogue.tab) as voice files",
        description=__doc__.split("\n\n")[1],
    )
    command.add_argument("dialogue", type=Path, help="the dialogue.tab that Ren'Py exported")
    command.add_argument(
        "-o", "--output", type=Path,
        help="folder for the .ogg files (default: game/voice beside dialogue.tab)",
    )  # fmt: skip
    command.add_argument(
        "-m", "--map", type=Path, dest="mapping", metavar="FILE",
        help='JSON voice mapping: {"e": {"voice": NAME, "style": S, "rate": 1.1, "pitch": 1.0, '
        f'"volume": 1.0}}, "{NARRATOR_KEY}": {{...}}, "{DEFAULT_KEY}": {{...}}}} keyed by the '
        f'Character column (the variable name; "{NARRATOR_KEY}" for narration, "{DEFAULT_KEY}" '
        "for the rest); null leaves them silent. Unlisted: as the cast says.",
    )  # fmt: skip
    # --cast is keyed by the Character column, as the live binding's speakers are, so that
    # files sound like live voicing; the disk cache reuses lines already heard live.
    engine_options(command)
    command.add_argument("--force", action="store_true", help="render every line again")
    command.add_argument("--quiet", action="store_true", help="no progress bar")
    command.set_defaults(command=_main)


# --- reading the export and the mapping ------------------------------------------------------


def read_mapping(path: Path | None) -> dict[str, dict[str, Any] | None]:
    """The character -> settings mapping (JSON); settings None means "do not voice"."""
    if path is None:
        return {}
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ExportError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(mapping, dict):
        raise ExportError(f"{path}: the mapping must be a JSON object")
    for name, settings in mapping.items():
        if settings is None:
            continue
        if not isinstance(settings, dict):
            raise ExportError(f"{path}: {name!r} must map to an object or null")
        for key, value in settings.items():
            expected = _SETTING_TYPES.get(key)
            if expected is None:
                raise ExportError(f"{path}: {name!r}: unknown setting {key!r}")
            if isinstance(value, bool) or not isinstance(value, expected):
                raise ExportError(f"{path}: {name!r}: bad value for {key!r}: {value!r}")
    return mapping


def settings_for(
    line: DialogueLine, mapping: dict[str, dict[str, Any] | None]
) -> VoiceSettings | None:
    key = line.character or NARRATOR_KEY
    settings = mapping[key] if key in mapping else mapping.get(DEFAULT_KEY, {})
    if settings is None:
        return None
    return VoiceSettings(
        voice=settings.get("voice"),
        style=settings.get("style"),
        rate=float(settings.get("rate", 1.0)),
        pitch=float(settings.get("pitch", 1.0)),
        volume=float(settings.get("volume", 1.0)),
    )


def fingerprint(job: Any) -> str:
    """What a file was made from (the synthesis job: read text, voice, every setting): a
    line is up to date when this has not changed."""
    parts = [str(part) if isinstance(part, str) else part.seconds for part in job.parts]
    source = json.dumps(
        [parts, job.voice, dataclasses.asdict(job.delivery), job.volume, "ogg"], sort_keys=True
    )
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:32]


# --- rendering ----------------------------------------------------------------------------------


@dataclass
class _Job:
    line: DialogueLine
    request: Any  # engine.SynthesisRequest
    digest: str
    path: Path


def _main(args: argparse.Namespace) -> int:

    try:
        lines = read_dialogue_tab(args.dialogue)
        mapping = read_mapping(args.mapping)
        cast = _read_cast(args.cast)
    except ExportError as exc:
        print(f"dialogue-tts renpy-render: {exc}", file=sys.stderr)
        return 2
    output: Path = args.output or args.dialogue.resolve().parent / "game" / "voice"
    return render_lines(
        lines, mapping, output, voices_dir=args.voices, force=args.force,
        progress=None if args.quiet else sys.stderr, cast=cast,
        disk_cache=disk_cache_option(args),
    )  # fmt: skip


def _read_cast(path: Path | None) -> Any:
    from .cast import DEFAULT_CAST, CastError, load_cast

    if path is None:
        return DEFAULT_CAST
    try:
        return load_cast(path)
    except CastError as exc:
        raise ExportError(str(exc)) from None


def render_lines(
    lines: list[DialogueLine],
    mapping: dict[str, dict[str, Any] | None],
    output: Path,
    voices_dir: Path | None = None,
    force: bool = False,
    progress: TextIO | None = None,
    cast: Any = None,
    disk_cache: Any = None,
) -> int:
    """Render every line that is not up to date; returns the exit status. ``disk_cache``
    (a ``cache.DiskCache``) keeps rendered lines and the voices' calibration."""
    from .cast import DEFAULT_CAST, CastError
    from .engine import VoiceCatalog

    catalog = VoiceCatalog(voices_dir)
    cast = cast or DEFAULT_CAST
    try:
        cast.check(catalog)
    except CastError as exc:
        raise ExportError(str(exc)) from None
    jobs, unchanged, silent = _plan(lines, mapping, output, catalog, force, cast)
    interpolated = sum(1 for line in lines if _INTERPOLATION.search(line.text))
    print(
        f"{len(lines)} lines: {len(jobs)} to render, {unchanged} up to date, "
        f"{silent} not voiced (mapping or no words)",
        file=progress or sys.stdout,
    )
    if interpolated:
        print(
            f"note: [interpolations] are left out of the speech in {interpolated} line(s) "
            "(Ren'Py fills them in only when the game runs)",
            file=progress or sys.stdout,
        )
    if not jobs:
        return 0
    output.mkdir(parents=True, exist_ok=True)
    manifest = _read_manifest(output)
    bar = ProgressBar(len(jobs), progress)
    try:
        failures = run_async(_render_all(catalog, jobs, output, manifest, bar, disk_cache))
    finally:
        bar.close()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    print(f"wrote {len(jobs) - len(failures)} files to {output}", file=progress or sys.stdout)
    return 1 if failures else 0


async def _render_all(
    catalog: Any,
    jobs: list[_Job],
    output: Path,
    manifest: dict[str, str],
    bar: ProgressBar,
    disk_cache: Any,
) -> list[str]:
    from .engine import Engine

    failures: list[str] = []
    async with Engine(catalog, disk_cache=disk_cache) as engine:
        try:
            with (output / JOURNAL_NAME).open("a", encoding="utf-8") as journal:
                await _render_jobs(engine, jobs, manifest, journal, bar, failures)
        finally:
            _write_manifest(output, manifest)  # after the journal is closed: it removes it
    return failures


async def _render_jobs(
    engine: Any,
    jobs: list[_Job],
    manifest: dict[str, str],
    journal: TextIO,
    bar: ProgressBar,
    failures: list[str],
) -> None:
    """Render the jobs on every synthesis thread, each file journaled as it is written."""
    limit = asyncio.Semaphore(engine.parallel_lines)  # keeps every core busy, no more

    async def render(job: _Job) -> None:
        async with limit:
            try:
                data = await _render_one(engine, job)
            except Exception as exc:  # one bad line must not lose the others
                failures.append(f"{job.line.where} {job.line.identifier}: {exc}")
            else:
                await asyncio.to_thread(_write_atomic, job.path, data)
                manifest[job.line.identifier] = job.digest
                entry = {"id": job.line.identifier, "digest": job.digest}
                journal.write(json.dumps(entry) + "\n")
                journal.flush()  # an interrupted run keeps every file it finished
            bar.advance(job.line.identifier)

    await asyncio.gather(*(render(job) for job in jobs))


def _plan(
    lines: list[DialogueLine],
    mapping: dict[str, dict[str, Any] | None],
    output: Path,
    catalog: Any,
    force: bool,
    cast: Any,
) -> tuple[list[_Job], int, int]:
    from .jobs import Limits, synthesis_request

    limits = Limits(max_text_chars=100_000)  # a build step: no per-connection bound to keep
    manifest = _read_manifest(output)
    jobs: list[_Job] = []
    unchanged = silent = 0
    for line in lines:
        settings = settings_for(line, mapping)
        if settings is None:
            silent += 1
            continue
        speaker = line.character or NARRATOR_KEY
        try:
            message = Synthesize(
                text=line.text, speaker=speaker, voice=settings.voice, style=settings.style,
                rate=settings.rate, pitch=settings.pitch, volume=settings.volume,
                markup="renpy", format="ogg",
            )  # fmt: skip
            message.check()
            request, _ = synthesis_request(message, cast, catalog, limits)
        except RemoteProtocolError as exc:
            if exc.code == errors.EMPTY_TEXT:
                silent += 1  # nothing to say once the text tags are gone
                continue
            raise ExportError(f"{line.where} ({speaker}): {exc.message}") from None
        except InvalidMessage as exc:
            raise ExportError(f"{line.where} ({speaker}): {exc}") from None
        digest = fingerprint(request)
        path = output / f"{line.identifier}.ogg"
        if not force and manifest.get(line.identifier) == digest and path.is_file():
            unchanged += 1
            continue
        jobs.append(_Job(line, request, digest, path))
    return jobs, unchanged, silent


async def _render_one(engine: Any, job: _Job) -> bytes:
    from .jobs import render_file

    return (await render_file(engine, job.request, "ogg")).data


def _read_manifest(output: Path) -> dict[str, str]:
    """What each file was made from: the manifest, and the journal of lines finished after
    it was written (a run that was stopped leaves one; a torn last entry is ignored)."""
    manifest: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((output / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, dict):
            manifest = {str(k): str(v) for k, v in files.items()}
    with contextlib.suppress(OSError):
        for row in (output / JOURNAL_NAME).read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, TypeError, KeyError):
                entry = json.loads(row)
                manifest[str(entry["id"])] = str(entry["digest"])
    return manifest


def _write_manifest(output: Path, manifest: dict[str, str]) -> None:
    """Fold the journal into the manifest (the journal goes once the manifest holds it)."""
    _write_atomic(output / MANIFEST_NAME, _manifest_bytes(manifest))
    with contextlib.suppress(FileNotFoundError):
        (output / JOURNAL_NAME).unlink()


def _manifest_bytes(manifest: dict[str, str]) -> bytes:
    files = dict(sorted(manifest.items()))
    data = {"comment": "written by dialogue-tts renpy-render", "files": files}
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, then rename over ``path``: a
    reader (or an interrupted run) never sees half a file."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; game files are not
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
