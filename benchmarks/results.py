"""benchmarks/RESULTS.md is written by several benchmark scripts: each owns one section,
between two marker comments, and rewrites only its own."""

from __future__ import annotations

from pathlib import Path

__all__ = ["write_section"]


def write_section(path: Path, name: str, lines: list[str]) -> None:
    """Put ``lines`` in ``path`` as the section ``name``: in place of its last version, or
    appended at the end."""
    begin, end = f"<!-- section {name}: begin -->", f"<!-- section {name}: end -->"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")
