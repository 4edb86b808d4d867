"""The Godot bindings: gdtoolkit on their scripts, and the Godot 3 port run headless.

The Godot 4 addon (integrations/godot) runs in Godot 4.6 in tests/test_godot4.py; here it is
parsed, linted and format-checked with gdtoolkit. Its Godot 3 port (integrations/godot3,
written from it by integrations/godot3/port.py, see tests/test_godot_port.py) runs under
Debian's ``godot3-server`` against a real server:
its GDScript test decodes and encodes every protocol vector, reads split and merged frames,
voices two speakers with skip, cancel, clear, pause/resume and interrupt, follows a line's
word and viseme timings as its playback reaches them (word_reached, viseme_changed), and
against a server started with a token: is accepted with the token, refused (once, no retries)
without it, and sends styles, pitch and its own cast.

The timings are driven by how far each speaker's AudioStreamGenerator has been played. The
headless engine's audio driver is Godot's dummy driver, which still mixes in real time (it
consumes about 22 050 frames a second of a 22.05 kHz generator, with no output latency), so
the test runs that path for real: words must not come earlier than their place in the audio.

CI needs ``pip install gdtoolkit`` and ``apt-get install godot3-server``; without them the
tests concerned are skipped with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, ServerThread, needs_engine, server_process

from dialogue_tts.cast import Cast
from dialogue_tts.server import ServerConfig

GODOT4_ADDON = REPO / "integrations" / "godot" / "addons" / "dialogue_tts"
GODOT3 = REPO / "integrations" / "godot3"
EXAMPLE = REPO / "examples" / "godot"
VECTORS = REPO / "protocol" / "vectors.json"

GODOT4_TESTS = REPO / "integrations" / "godot" / "tests"
GODOT4_SCRIPTS = (
    sorted(GODOT4_ADDON.glob("*.gd"))
    + sorted(GODOT4_TESTS.glob("*.gd"))
    + sorted((REPO / "benchmarks" / "godot4").glob("*.gd"))
    + sorted(path for path in EXAMPLE.rglob("*.gd") if GODOT4_ADDON not in path.resolve().parents)
)
GODOT3_SCRIPTS = sorted(GODOT3.rglob("*.gd"))
# gdtoolkit 4 parses Godot 4 syntax. The Godot 3 scripts are written in the subset both share,
# except plugin.gd, whose Godot 3 `tool` keyword gdtoolkit rejects: Godot 3 itself checks that
# one (test_godot3_scripts_parse).
GDTOOLKIT_SCRIPTS = GODOT4_SCRIPTS + [path for path in GODOT3_SCRIPTS if path.name != "plugin.gd"]

GODOT3_BIN = shutil.which("godot3-server")
needs_godot3 = needs_engine(
    GODOT3_BIN is not None,
    "godot3-server is not on PATH (CI runs `apt-get install -y godot3-server`)",
)
HANG_GUARD_SECONDS = 300  # only so that a stuck engine cannot hang the suite
TOKEN = "godot-test-token"
# What test_dialogue_tts.gd expects of the token server's cast.
TOKEN_SERVER_CAST = {
    "speakers": {"guard": {"pitch": 0.85, "styles": {"stern": {"rate": 0.9, "volume": 1.2}}}},
    "styles": {"whisper": {"volume": 0.5, "noise_scale": 0.3}},
}


def _gdtoolkit(tool: str) -> str:
    pytest.importorskip("gdtoolkit", reason="gdtoolkit is not installed (pip install gdtoolkit)")
    path = Path(sys.executable).parent / tool
    return str(path) if path.exists() else tool


def test_scripts_exist() -> None:
    names = {path.name for path in GODOT4_ADDON.glob("*.gd")}
    godot3_names = {path.name for path in (GODOT3 / "addons" / "dialogue_tts").glob("*.gd")}
    assert godot3_names == names - {"web_socket_transport.gd"}  # the web is Godot 4 only
    assert {"plugin.gd", "dialogue_tts.gd", "msgpack.gd", "frame_reader.gd"} <= names
    assert (GODOT3 / "tests" / "test_dialogue_tts.gd").exists()
    assert any(EXAMPLE.rglob("*.gd"))


@pytest.mark.parametrize("command", [["gdparse"], ["gdlint"], ["gdformat", "--check"]])
def test_gdtoolkit(command: list[str]) -> None:
    result = subprocess.run(
        [_gdtoolkit(command[0]), *command[1:], *map(str, GDTOOLKIT_SCRIPTS)],
        capture_output=True, text=True, timeout=HANG_GUARD_SECONDS,
        cwd=REPO / "integrations",  # gdlint reads integrations/gdlintrc from there
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_godot4_autoload_has_no_class_name() -> None:
    # An autoload with a class_name clashes with its own singleton name.
    source = (GODOT4_ADDON / "dialogue_tts.gd").read_text()
    assert not re.search(r"^class_name\b", source, re.MULTILINE)
    plugin = (GODOT4_ADDON / "plugin.gd").read_text()
    assert 'AUTOLOAD_NAME: String = "DialogueTTS"' in plugin
    assert "func _enable_plugin()" in plugin and "add_autoload_singleton" in plugin
    assert "func _disable_plugin()" in plugin and "remove_autoload_singleton" in plugin


@pytest.fixture
def godot3_project(tmp_path: Path) -> Path:
    """A throwaway Godot 3 project: tests/project.godot, tests/ and addons/dialogue_tts/."""
    project = tmp_path / "project"
    shutil.copytree(GODOT3 / "addons", project / "addons")
    shutil.copytree(GODOT3 / "tests", project / "tests")
    shutil.copy(GODOT3 / "tests" / "project.godot", project / "project.godot")
    (tmp_path / "home").mkdir()
    return project


def _run_godot3(
    project: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "LANG": "en_US.UTF-8",  # the test speaks and decodes non-ASCII text
        "HOME": str(project.parent / "home"),  # user:// and logs go there, not to ~
        **(env or {}),
    }
    assert GODOT3_BIN is not None
    return subprocess.run(
        [GODOT3_BIN, "--path", str(project), *args],
        capture_output=True, text=True, env=environment, timeout=HANG_GUARD_SECONDS,
    )  # fmt: skip


@needs_godot3
@pytest.mark.parametrize("script", [path.relative_to(GODOT3).as_posix() for path in GODOT3_SCRIPTS])
def test_godot3_scripts_parse(godot3_project: Path, script: str) -> None:
    # A parse error in a `-s` script still exits 0, so every script is checked on its own.
    result = _run_godot3(godot3_project, "--check-only", "-s", f"res://{script}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SCRIPT ERROR" not in result.stderr, result.stderr
    assert "Parse Error" not in result.stderr, result.stderr


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@needs_godot3
def test_godot3_headless_against_server(
    godot3_project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead_port = _unused_port()  # nothing listens there once the socket is closed
    token_server = ServerThread(
        ServerConfig(port=0, token=TOKEN, cast=Cast.from_dict(TOKEN_SERVER_CAST))
    ).start()
    try:
        with server_process() as (port, _process):
            result = _run_godot3(
                godot3_project, "-s", "res://tests/test_dialogue_tts.gd",
                env={
                    "DIALOGUE_TTS_PORT": str(port),
                    "DIALOGUE_TTS_DEAD_PORT": str(dead_port),
                    "DIALOGUE_TTS_VECTORS": str(VECTORS),
                    "DIALOGUE_TTS_TOKEN_PORT": str(token_server.port),
                    "DIALOGUE_TTS_TOKEN": TOKEN,
                },
            )  # fmt: skip
    finally:
        token_server.stop()
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert "SCRIPT ERROR" not in result.stderr, output
    assert "GODOT_TEST_FAIL" not in result.stdout, output
    assert result.returncode == 0, output
    match = re.search(r"^GODOT_TEST_OK n_checks=(\d+)$", result.stdout, re.MULTILINE)
    assert match, output
    # The vector checks alone: decode + one frame + encode per message vector, two or three per
    # bad frame, one per split of the stream. The live part adds a few hundred more.
    vectors = json.loads(VECTORS.read_text())
    minimum = (
        3 * (len(vectors["requests"]) + len(vectors["events"]))
        + 2 * len(vectors["bad_frames"])
        + len(vectors["stream"]["splits"])
    )
    assert int(match.group(1)) > minimum, output
    assert f"no dialogue-tts server at 127.0.0.1:{dead_port}" in result.stderr, output
    # The timings part ran: its words came one after another, spread over most of the line
    # (generous bounds; the GDScript test checks each word against its place in the audio).
    timings = re.search(
        r"^GODOT_TEST_INFO timings: (\d+) words, (\d+) emitted while playing, in (\d+) frames;"
        r".* last word (\d+) ms after the first; all audio arrived within \d+ ms;"
        r" line of (\d+) ms",
        result.stdout,
        re.MULTILINE,
    )
    assert timings, output
    words, playing, frames, spread, line = map(int, timings.groups())
    assert words == 14 and playing * 2 >= words and frames * 2 >= playing, output
    assert spread > line / 2, output
    # The node with a wrong token was refused once, logged it once and never tried again (its
    # own signals are checked by the GDScript test); no token is ever printed.
    refusals = [r for r in caplog.records if "Refused a client" in r.getMessage()]
    assert len(refusals) == 1, output
    assert result.stderr.count("the server refused this game (unauthorized") == 1, output
    assert TOKEN not in output and "wrong-token" not in output


@needs_godot3
def test_godot3_server_path_that_cannot_start(godot3_project: Path) -> None:
    """A server_path with no program there: reported once, the line ends "error", no hang.
    (The bundle started from server_path is tested in tests/test_bundle.py.)"""
    result = _run_godot3(
        godot3_project, "-s", "res://tests/test_server_path.gd",
        env={"DIALOGUE_TTS_SERVER_PATH": "no-such-folder/dialogue-tts-server"},
    )  # fmt: skip
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    assert result.returncode == 1, output
    assert "GODOT_TEST_FAIL a line ended error" in result.stdout, output
    missing = f"{godot3_project}/no-such-folder/dialogue-tts-server: no such program"
    assert result.stderr.count(f"cannot start the dialogue-tts server {missing}") == 1, output
    assert "SCRIPT ERROR" not in result.stderr, output
