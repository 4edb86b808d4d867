"""What every command sets up the same way: the engine and the cast from options and the
environment, the shared secret, the event loop, and playing a file.

The commands (``cli``, ``preview``, ``renpy_render``, ``words``) import this; it imports none
of them, so the command modules never import each other. The engine, cache and cast are
imported inside the functions, for start-up time only (they load ONNX Runtime).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "CAST_ENV",
    "HOST_ENV",
    "PORT_ENV",
    "TOKEN_ENV",
    "VOICES_ENV",
    "WEB_ORIGINS_ENV",
    "build_engine",
    "disk_cache_option",
    "engine_options",
    "env_path",
    "load_cast_option",
    "play_file",
    "player",
    "read_token",
    "run_async",
]

_T = TypeVar("_T")

VOICES_ENV = "DIALOGUE_TTS_VOICES"
HOST_ENV = "DIALOGUE_TTS_HOST"
PORT_ENV = "DIALOGUE_TTS_PORT"
WEB_ORIGINS_ENV = "DIALOGUE_TTS_WEB_ORIGINS"
TOKEN_ENV = "DIALOGUE_TTS_TOKEN"
CAST_ENV = "DIALOGUE_TTS_CAST"  # the same as cast.CAST_ENV
_PLAYERS = (
    ["aplay", "-q"],
    ["paplay"],
    ["afplay"],
    ["ffplay", "-nodisp", "-autoexit", "-loglevel", "quiet"],
)


def engine_options(command: argparse.ArgumentParser) -> None:
    """Voices, cast and cache options, for every command that may synthesize in-process."""
    command.add_argument(
        "--voices", type=Path, metavar="DIR", default=env_path(VOICES_ENV),
        help="folder of extra voices: Piper (*.onnx + *.onnx.json), Kokoro "
        f"(kokoro*.onnx + kokoro-voices/); env {VOICES_ENV}",
    )  # fmt: skip
    command.add_argument(
        "--cast", type=Path, metavar="FILE", default=env_path(CAST_ENV),
        help=f"cast file (TOML): each speaker's voice, rate, pitch and styles; env {CAST_ENV}",
    )  # fmt: skip
    command.add_argument(
        "--cache-dir", type=Path, metavar="DIR",
        help="folder of the rendered-line cache (default: the user cache folder, "
        "or env DIALOGUE_TTS_CACHE)",
    )  # fmt: skip
    command.add_argument(
        "--cache-size", type=int, default=512, metavar="MIB",
        help="largest size of the rendered-line cache in MiB (default 512)",
    )  # fmt: skip
    command.add_argument("--no-cache", action="store_true", help="keep no rendered lines on disk")


def build_engine(
    args: argparse.Namespace, workers: int | None = None, threads: int | None = None
) -> Engine:
    """The engine the options describe: voices folder and disk cache (``async with`` it)."""
    from .engine import Engine, VoiceCatalog

    return Engine(
        VoiceCatalog(args.voices), workers=workers, intra_op_threads=threads,
        disk_cache=disk_cache_option(args),
    )  # fmt: skip


def disk_cache_option(args: argparse.Namespace) -> Any:
    """The disk cache of rendered lines (and voices' calibration) the options ask for."""
    from .cache import DiskCache, default_cache_dir

    if args.no_cache:
        return None
    return DiskCache(args.cache_dir or default_cache_dir(), args.cache_size << 20)


def load_cast_option(args: argparse.Namespace, catalog: Any) -> Any:
    """The --cast file, checked against the catalog's voices (the empty cast without one)."""
    from .cast import DEFAULT_CAST, CastError, load_cast

    if args.cast is None:
        return DEFAULT_CAST
    try:
        cast = load_cast(args.cast)
        cast.check(catalog)
    except CastError as exc:
        raise ValueError(str(exc)) from None
    return cast


def read_token(args: argparse.Namespace) -> str | None:
    """The shared secret: --token-file's first line, else $DIALOGUE_TTS_TOKEN, else None.

    Never a command-line value: other users can read a process's arguments.
    """
    path: Path | None = getattr(args, "token_file", None)
    if path is not None:
        lines = path.read_text(encoding="utf-8").splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"{path} holds no token")
        return token
    return os.environ.get(TOKEN_ENV) or None


def env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value) if value else None


def run_async(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run on uvloop where it exists (Linux, macOS), plain asyncio elsewhere (Windows)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def play_file(path: Path) -> int:
    """Play an audio file with the system's player (aplay, paplay, afplay or ffplay)."""
    command = player()
    if command is None:
        print(f"no audio player found (aplay, paplay, afplay or ffplay); the file is {path}")
        return 0
    status = subprocess.call([*command, str(path)])
    if status != 0:
        print(f"{command[0]} could not play {path} (no audio device?)", file=sys.stderr)
    return status


def player() -> list[str] | None:
    return next((command for command in _PLAYERS if shutil.which(command[0])), None)
