"""integrations/godot3/port.py: the Godot 3 addon is written from the Godot 4 one.

The committed Godot 3 files must be exactly what the script writes, so a change made only to
one of the two addons fails here; the rules and the by-hand regions are checked on small
examples. Godot 3 itself runs the result in tests/test_godot.py.
"""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest
from helpers import REPO

PORT_SCRIPT = REPO / "integrations" / "godot3" / "port.py"


def _load_port() -> ModuleType:
    spec = importlib.util.spec_from_file_location("godot3_port", PORT_SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


port = _load_port()


def test_committed_godot3_addon_is_the_port_of_the_godot4_one() -> None:
    files = port.ported_files()
    assert {path.name for path in files} >= {"dialogue_tts.gd", "msgpack.gd", "plugin.cfg"}
    stale = [path.name for path, text in files.items() if path.read_text(encoding="utf-8") != text]
    assert stale == [], (
        f"{stale} differ from the port of integrations/godot: change the Godot 4 addon (or a "
        "Godot 3 file inside its '#region Differs in Godot 3' blocks only), then run "
        "python integrations/godot3/port.py"
    )
    assert port.main(["--check"]) == 0


def test_the_web_transport_stays_godot4_only() -> None:
    names = {path.name for path in port.ported_files()}
    assert "web_socket_transport.gd" not in names and "tcp_transport.gd" in names
    assert port.port_line('const WebSocketTransport := preload("web_socket_transport.gd")') == []
    assert port.port_line("## A web export uses the server's WebSocket port instead.") == []
    assert port.port_line("## The server's TCP port.") == ["## The server's TCP port."]


@pytest.mark.parametrize(
    ("godot4", "godot3"),
    [
        ("signal line_started(line: int, speaker: String)", "signal line_started(line, speaker)"),
        ("\tfinished.emit(line, status)", '\temit_signal("finished", line, status)'),
        ("\tconnected.emit()", '\temit_signal("connected")'),
        ("# TTS.done.connect(_on_done)", '# TTS.connect("done", self, "_on_done")'),
        ('\t_fail_line.call_deferred(line, "x")', '\tcall_deferred("_fail_line", line, "x")'),
        ("var pending: Array[PackedVector2Array] = []", "var pending: Array = []"),
        ("\tfor speaker: Speaker in _speakers.values():", "\tfor speaker in _speakers.values():"),
        ("\tif not wanted.is_empty():", "\tif not wanted.empty():"),
        ("\tvar value: Variant = _read(stream)", "\tvar value = _read(stream)"),
        ("func decode(bytes: PackedByteArray) -> Variant:", "func decode(bytes: PoolByteArray):"),
        ("var _state: State = State.DISCONNECTED", "var _state: int = State.DISCONNECTED"),
        ("\tvar status: Transport.Status = poll()", "\tvar status: int = poll()"),
        ("func send(bytes: PackedByteArray) -> Error:", "func send(bytes: PoolByteArray) -> int:"),
        ("\tresize(mini(PUSH, size(a) - b))", "\tresize(int(min(PUSH, size(a) - b)))"),
        ("\treturn maxf(late, 0.0)", "\treturn max(late, 0.0)"),
        ("\tspeaker.marks.remove_at(index)", "\tspeaker.marks.remove(index)"),
        ("\tmsec = Time.get_ticks_msec()", "\tmsec = OS.get_ticks_msec()"),
        ('var bus: StringName = &"Master"', 'var bus: String = "Master"'),
        ("extends RefCounted", "extends Reference"),
        ("@tool", "tool"),
    ],
)  # fmt: skip
def test_port_line(godot4: str, godot3: str) -> None:
    assert port.port_line(godot4) == [godot3]


GODOT4 = """extends RefCounted
#region Differs in Godot 3: bytes
static func sliced(bytes: PackedByteArray) -> PackedByteArray:
\treturn bytes.slice(1)
#endregion
func size(bytes: PackedByteArray) -> int:
\treturn bytes.size()
"""
GODOT3 = """extends Reference
#region Differs in Godot 3: bytes
static func sliced(bytes: PoolByteArray) -> PoolByteArray:
\treturn bytes.subarray(1, -1)
#endregion
func size(bytes: PoolByteArray) -> int:
\treturn bytes.size() + 1  # edited by hand outside a region: lost on the next port
#region Differs in Godot 3: only here
func _tail() -> void:
\tpass
#endregion
"""


def test_regions_are_kept_by_hand_and_the_rest_is_ported() -> None:
    ported = port.port(GODOT4, GODOT3)
    assert "return bytes.subarray(1, -1)" in ported  # the Godot 3 region wins
    assert "bytes.slice(1)" not in ported
    assert "\treturn bytes.size()\n" in ported and "+ 1" not in ported  # the rest is ported
    assert ported.rstrip().endswith("func _tail() -> void:\n\tpass\n#endregion")
    assert port.port(GODOT4, ported) == ported  # stable: porting again changes nothing
    # Without a Godot 3 file, a region is ported by the rules like any other line.
    assert "static func sliced(bytes: PoolByteArray) -> PoolByteArray:" in port.port(GODOT4)
