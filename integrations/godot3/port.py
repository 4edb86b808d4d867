"""Writes the Godot 3 addon from the Godot 4 one, so that a logic change is made once.

    python integrations/godot3/port.py          # rewrite integrations/godot3/addons
    python integrations/godot3/port.py --check  # exit 1 if they differ from what it writes

Each Godot 4 script is rewritten line by line with the RULES below: Godot 4 names and syntax
that have a Godot 3 spelling (``PackedByteArray`` -> ``PoolByteArray``, ``x.emit(...)`` ->
``emit_signal("x", ...)``, typed arrays and loops untyped, ...). What has no such spelling is
kept by hand in marked regions (``#region Differs in Godot 3: ...`` to ``#endregion``): the
Godot 3 file's own region of that name replaces the Godot 4 one, and regions that only the
Godot 3 file has stay at its end. So the Godot 3 files may be edited inside their regions
only; tests/test_godot_port.py fails when they differ from what this script writes.

The web transport (web_socket_transport.gd) is Godot 4 only, and so are comment lines about
web exports: Godot 3 games connect over TCP.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

GODOT4_ADDON = Path(__file__).resolve().parent.parent / "godot" / "addons" / "dialogue_tts"
GODOT3_ADDON = Path(__file__).resolve().parent / "addons" / "dialogue_tts"
GODOT4_ONLY = frozenset({"web_socket_transport.gd"})
REGION = re.compile(r"^\s*#region (Differs in Godot 3: .+)$")
END_REGION = re.compile(r"^\s*#endregion\s*$")
PLUGIN_DESCRIPTION = re.compile(r'^(description=".*)(")$')
# Comment lines about web exports, which the Godot 3 port does not support (the Godot 4 source
# keeps each such sentence on lines of its own).
WEB_ONLY_COMMENT = re.compile(
    r"^\s*#.*(web export|WebSocket|on the web|serve --web)", re.IGNORECASE
)

Rule = tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]


def _untyped_signal(match: re.Match[str]) -> str:
    names = [argument.split(":")[0].strip() for argument in match.group(2).split(",")]
    return f"signal {match.group(1)}({', '.join(name for name in names if name)})"


RULES: list[Rule] = [
    (re.compile(r"^@tool$"), "tool"),
    (re.compile(r"\bRefCounted\b"), "Reference"),
    (re.compile(r"\bPackedByteArray\b"), "PoolByteArray"),
    (re.compile(r"\bPackedFloat32Array\b"), "PoolRealArray"),
    (re.compile(r"\bPackedVector2Array\b"), "PoolVector2Array"),
    (re.compile(r"\bPackedStringArray\b"), "PoolStringArray"),
    (re.compile(r"\bArray\[\w+\]"), "Array"),
    (re.compile(r"\.is_empty\(\)"), ".empty()"),
    (re.compile(r"\bTime\.get_ticks_msec\("), "OS.get_ticks_msec("),
    (re.compile(r"\bTYPE_FLOAT\b"), "TYPE_REAL"),
    (re.compile(r"\bTYPE_STRING, TYPE_STRING_NAME\b"), "TYPE_STRING"),
    (re.compile(r"\bTYPE_PACKED_BYTE_ARRAY\b"), "TYPE_RAW_ARRAY"),
    (re.compile(r'\bStringName = &"'), 'String = "'),
    (re.compile(r"\b(min|max)f\("), r"\1("),
    (re.compile(r"\.path_join\("), ".plus_file("),
    (re.compile(r"\.is_absolute_path\("), ".is_abs_path("),
    (re.compile(r"\.remove_at\("), ".remove("),
    (re.compile(r"^func _(enable|disable)_plugin\("), r"func \1_plugin("),
    # Signals: typed arguments, emit() and connect() on the signal itself.
    (re.compile(r"^signal (\w+)\((.*)\)$"), _untyped_signal),
    (re.compile(r"\b(\w+)\.emit\(\)"), r'emit_signal("\1")'),
    (re.compile(r"\b(\w+)\.emit\("), r'emit_signal("\1", '),
    (re.compile(r"\b(\w+)\.(\w+)\.connect\((\w+)\)"), r'\1.connect("\2", self, "\3")'),
    (re.compile(r"\b(\w+)\.call_deferred\("), r'call_deferred("\1", '),
    # Types Godot 3 cannot name: Variant, enums (ints there), typed loop variables, casts.
    (re.compile(r"(\bvar \w+|\b\w+): Variant\b"), r"\1"),
    (re.compile(r"\) -> Variant:"), "):"),
    (re.compile(r"(:|->) (?:\w+\.)?(State|Status|Error)\b(?!\.)"), r"\1 int"),
    (re.compile(r"\bfor (\w+): [\w.]+ in "), r"for \1 in "),
    (re.compile(r"\((\w+) as \w+\)"), r"\1"),
]


def port_line(line: str) -> list[str]:
    """One Godot 4 line in Godot 3, or none (lines inside regions are not ported: see port())."""
    if any(name in line for name in GODOT4_ONLY) or WEB_ONLY_COMMENT.match(line):
        return []  # e.g. the web transport's preload
    for pattern, replacement in RULES:
        line = pattern.sub(replacement, line)
    return [_integer_min_max(line)]


def _integer_min_max(line: str) -> str:
    """``mini(a, b)`` -> ``int(min(a, b))``: Godot 3's min() and max() return floats."""
    while match := re.search(r"\b(min|max)i\(", line):
        depth, end = 0, match.end() - 1
        for end in range(match.end() - 1, len(line)):
            depth += {"(": 1, ")": -1}.get(line[end], 0)
            if depth == 0:
                break
        inner = line[match.end() : end]
        line = f"{line[: match.start()]}int({match.group(1)}({inner})){line[end + 1 :]}"
    return line


def regions(lines: list[str]) -> dict[str, list[str]]:
    """The marked regions of a script: name -> its lines, markers included."""
    found: dict[str, list[str]] = {}
    name: str | None = None
    for line in lines:
        start = REGION.match(line)
        if start:
            name = start.group(1)
            found[name] = []
        if name is not None:
            found[name].append(line)
            if END_REGION.match(line):
                name = None
    return found


def port(godot4: str, godot3: str = "") -> str:
    """The Godot 3 text of a Godot 4 script, with the regions of its Godot 3 text."""
    kept = regions(godot3.splitlines())
    output: list[str] = []
    lines = godot4.splitlines()
    index = 0
    while index < len(lines):
        start = REGION.match(lines[index])
        if start is None:
            output.extend(port_line(lines[index]))
            index += 1
            continue
        body = regions(lines[index:])[start.group(1)]
        ported = [new for line in body for new in port_line(line)]
        output.extend(kept.pop(start.group(1), ported))
        index += len(body)
    for body in kept.values():  # regions only the Godot 3 script has
        output.extend(["", "", *body])
    return "\n".join(output) + "\n"


def port_plugin_cfg(godot4: str) -> str:
    lines = [PLUGIN_DESCRIPTION.sub(r"\1 Godot 3.x port.\2", line) for line in godot4.splitlines()]
    return "\n".join(lines) + "\n"


def ported_files() -> dict[Path, str]:
    """Every Godot 3 addon file and the text this script gives it."""
    files: dict[Path, str] = {}
    for source in sorted(GODOT4_ADDON.iterdir()):
        target = GODOT3_ADDON / source.name
        if source.suffix == ".gd" and source.name not in GODOT4_ONLY:
            current = target.read_text(encoding="utf-8") if target.exists() else ""
            files[target] = port(source.read_text(encoding="utf-8"), current)
        elif source.name == "plugin.cfg":
            files[target] = port_plugin_cfg(source.read_text(encoding="utf-8"))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report differences")
    args = parser.parse_args(argv)
    stale = []
    for target, text in ported_files().items():
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            stale.append(target)
            if not args.check:
                target.write_text(text, encoding="utf-8")
    for target in stale:
        print(f"{'differs' if args.check else 'wrote'}: {target}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
