"""A progress bar for batch commands (renpy-render, preview), with no dependency."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """``[#####-----] 12/40 start_1d74fc79`` on one line of a terminal, else a line per 10%."""

    def __init__(self, total: int, stream: TextIO | None, width: int = 30) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.width = width
        self._tty = bool(stream is not None and stream.isatty())
        self._printed = -1
        self._write: Callable[[str], Any] = stream.write if stream is not None else len

    def advance(self, label: str) -> None:
        self.done += 1
        if self.stream is None:
            return
        filled = self.width * self.done // self.total
        bar = f"[{'#' * filled}{'-' * (self.width - filled)}] {self.done}/{self.total}"
        if self._tty:
            self._write(f"\r{bar} {label[:40]:40}")
        elif self.done * 10 // self.total > self._printed or self.done == self.total:
            self._printed = self.done * 10 // self.total
            self._write(f"{bar}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._tty and self.stream is not None:
            self._write("\n")
