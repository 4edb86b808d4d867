"""The entry point of a bundle (``dialogue-tts bundle``): ``dialogue-tts-server [serve options]``.

It is ``dialogue-tts serve`` with the bundle's own cast file and voices folder, when it has
them; the command-line options come after them, so a game may still override either.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from .bundle import CAST_NAME, VOICES_NAME
from .cli import main as cli_main


def main(argv: Sequence[str] | None = None) -> int:
    root = Path(sys.executable).resolve().parent
    options: list[str] = []
    if (root / CAST_NAME).is_file():
        options += ["--cast", str(root / CAST_NAME)]
    if (root / VOICES_NAME).is_dir():
        options += ["--voices", str(root / VOICES_NAME)]
    return cli_main(["serve", *options, *(sys.argv[1:] if argv is None else argv)])
