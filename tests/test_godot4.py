"""The Godot 4 addon in Godot 4.6 itself: a web export in headless Chromium, over WebSocket.

integrations/godot/tests is zipped with the addon into a game pack and run by Godot's
official 4.6 web template (see godot_web.py), so the addon takes its web transport
(WebSocketPeer) to real servers started with ``serve --web`` and the origin check on: the
game's page origin is the one allowed. The GDScript test prints its checks to the page's
console, which Playwright hands to this test.

Servers: one ``dialogue-tts serve --web`` subprocess; one with a token and a cast; one started
only when the game asks for it (the game must find it by itself); one that does not allow the
game's origin; and a fake one that sends malformed messages.

The demo, examples/godot, is run the same way, with an autoload (demo_probe.gd) that reports
how its lines finished and which shapes its characters' mouths showed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import godot_web
import msgpack
import pytest
from godot_web import browser_page, served_game, start, wait_done, wait_for
from helpers import REPO, REQUIRE_ENGINES_ENV, ServerThread, server_process

from dialogue_tts.cast import Cast
from dialogue_tts.server import ServerConfig

ADDON = REPO / "integrations" / "godot" / "addons" / "dialogue_tts"
TESTS = REPO / "integrations" / "godot" / "tests"
EXAMPLE = REPO / "examples" / "godot"
VECTORS = REPO / "protocol" / "vectors.json"
TOKEN = "godot4-test-token"
TOKEN_SERVER_CAST = {
    "speakers": {"guard": {"pitch": 0.85, "styles": {"stern": {"rate": 0.9, "volume": 1.2}}}},
}
HANG_GUARD_SECONDS = 300  # only so that a stuck engine cannot hang the suite


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def web_port_of(log: Path) -> int:
    """The WebSocket port a `serve --web --web-port 0` printed."""
    match = re.search(r"preview page: http://[\d.]+:(\d+)/", log.read_text())
    assert match, log.read_text()
    return int(match.group(1))


@contextlib.contextmanager
def malformed_server() -> Iterator[int]:
    """A fake server: a welcome, then a frame that is not msgpack, then a map without a type,
    then a good ``voices`` message. Yields its port."""
    from websockets.sync.server import ServerConnection, serve

    def handle(websocket: ServerConnection) -> None:
        websocket.recv()  # the hello
        welcome = {"type": "welcome", "protocol": 1, "server": "malformed-test", "voices": []}
        websocket.send(msgpack.packb(welcome))
        websocket.send(b"\xc1")  # a byte msgpack never uses
        websocket.send(msgpack.packb([1, 2]))
        voice = {"name": "fake", "language": "en", "sample_rate": 22050, "speakers": []}
        websocket.send(msgpack.packb({"type": "voices", "voices": [voice]}))
        for _message in websocket:  # hold the connection until the game closes it
            pass

    with serve(handle, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, name="malformed", daemon=True)
        thread.start()
        try:
            yield int(server.socket.getsockname()[1])
        finally:
            server.shutdown()
            thread.join(10)


def test_godot4_addon_in_chromium(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pack = {"project.godot": TESTS / "project.godot", "tests": TESTS, "addons/dialogue_tts": ADDON}
    pack["tests/vectors.json"] = VECTORS
    with contextlib.ExitStack() as stack:
        game = stack.enter_context(served_game(tmp_path / "site", pack))
        log = tmp_path / "server.log"
        stack.enter_context(
            server_process("--web", "--web-port", "0", "--web-origin", game.origin, log_path=log)
        )
        token_server = ServerThread(
            ServerConfig(
                port=0, web_port=0, web_origins=(game.origin,), token=TOKEN,
                cast=Cast.from_dict(TOKEN_SERVER_CAST),
            )
        ).start()  # fmt: skip
        stack.callback(token_server.stop)
        assert token_server.server is not None and token_server.server.web is not None
        # Allows only its own preview page's origin, not the game's.
        other_origin = ServerThread(ServerConfig(port=0, web_port=0)).start()
        stack.callback(other_origin.stop)
        assert other_origin.server is not None and other_origin.server.web is not None
        late_port = _unused_port()
        bad_port = stack.enter_context(malformed_server())
        page = stack.enter_context(browser_page(game))
        args = [
            f"--port={web_port_of(log)}", f"--late-port={late_port}",
            f"--token-port={token_server.server.web.port}", f"--token={TOKEN}",
            f"--bad-port={bad_port}", f"--other-origin-port={other_origin.server.web.port}",
        ]  # fmt: skip
        start(page, game, args)
        wait_for(page, game, "window.phase === 'need_server' || window.done", HANG_GUARD_SECONDS)
        late = ServerThread(
            ServerConfig(port=0, web_port=late_port, web_origins=(game.origin,))
        ).start()
        stack.callback(late.stop)
        output = wait_done(page, game, HANG_GUARD_SECONDS)
    print("\n".join(line for line in output.splitlines() if "GODOT_TEST" in line))
    assert "SCRIPT ERROR" not in output, output
    assert "GODOT_TEST_FAIL" not in output, output
    match = re.search(r"^GODOT_TEST_OK n_checks=(\d+)$", output, re.MULTILINE)
    assert match, output
    assert int(match.group(1)) > 300, output
    # A prepared line played from the audio the addon held, equal to the server's stream.
    assert re.search(r"^GODOT_TEST_INFO held: [1-9]\d* samples", output, re.MULTILINE), output
    # One warning for the whole outage, though the node retried until the server started.
    assert output.count(f"no dialogue-tts server at 127.0.0.1:{late_port}") == 1, output
    # ... which says how to start a server this page may use.
    assert f"`dialogue-tts serve --web --web-origin {game.origin}`" in output, output
    # The node with a wrong token was refused once and never tried again; no token printed.
    assert output.count("the server refused this game (unauthorized") == 1, output
    origin_refusals = [r for r in caplog.records if "Refused a web request" in r.getMessage()]
    assert any(game.origin in r.getMessage() for r in origin_refusals), output
    refusals = [r for r in caplog.records if "Refused a client" in r.getMessage()]
    assert len(refusals) == 1, output  # the token server saw one hello with the wrong token
    assert TOKEN not in output.replace(f"--token={TOKEN}", "")


def test_godot4_demo_in_chromium(tmp_path: Path) -> None:
    # The demo as it is, plus an autoload that watches it and the port of the test's server.
    with contextlib.ExitStack() as stack:
        project = tmp_path / "project.godot"
        pack = {"": EXAMPLE, "addons/dialogue_tts": ADDON, "project.godot": project}
        pack["demo_probe.gd"] = TESTS / "demo_probe.gd"
        game = stack.enter_context(served_game(tmp_path / "site", pack))
        log = tmp_path / "server.log"
        stack.enter_context(
            server_process("--web", "--web-port", "0", "--web-origin", game.origin, log_path=log)
        )
        settings = (EXAMPLE / "project.godot").read_text(encoding="utf-8")
        settings = settings.replace(
            "[autoload]\n", '[autoload]\n\nDemoProbe="*res://demo_probe.gd"\n'
        )  # after DialogueTTS, which it connects to
        settings += f"\n[dialogue_tts]\n\nport={web_port_of(log)}\n"
        project.write_text(settings, encoding="utf-8")
        game.pack(pack)  # again, with the server's port
        page = stack.enter_context(browser_page(game))
        start(page, game, [])
        output = wait_done(page, game, HANG_GUARD_SECONDS)
    print("\n".join(line for line in output.splitlines() if "DEMO_" in line))
    assert "SCRIPT ERROR" not in output, output
    statuses = re.findall(r"^DEMO_LINE \d+ (\w+) (\w+)$", output, re.MULTILINE)
    assert [speaker for speaker, _status in statuses] == [
        "guard", "traveller", "guard", "traveller", "guard"
    ], output  # fmt: skip
    assert all(status == "done" for _speaker, status in statuses), output
    # Lookahead: while each line played, the next ones were prepared, so every line but the
    # first was prepared once (a line handed over again is not prepared twice).
    prepared = re.findall(r"^DEMO_PREPARED (\w+) ", output, re.MULTILINE)
    assert sorted(prepared) == ["guard", "guard", "traveller", "traveller"], output
    # ... and their audio held, so that their speak() started from it (at least one: a line
    # spoken before its prepare came back plays from the server, as it should).
    assert re.search(r"^DEMO_HELD \d+ (guard|traveller)$", output, re.MULTILINE), output
    # Each mouth moved: it showed several shapes, and closed again at the end.
    for mouth in ("GuardMouth", "TravellerMouth"):
        match = re.search(rf"^DEMO_MOUTH {mouth} (.*)$", output, re.MULTILINE)
        assert match, output
        shapes = set(match.group(1).split())
        assert len(shapes) >= 4 and "sil" in shapes, (mouth, shapes)


def test_a_missing_runtime_fails_where_engines_are_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(godot_web.TEMPLATE_ENV, str(tmp_path))  # an empty folder: no template
    monkeypatch.setenv("CI", "false")
    monkeypatch.delenv(REQUIRE_ENGINES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Godot 4 web template"):
        godot_web.template_dir()
    monkeypatch.setenv(REQUIRE_ENGINES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="no Godot 4 web template"):
        godot_web.template_dir()
    monkeypatch.delenv(REQUIRE_ENGINES_ENV)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"index\.wasm"):
        godot_web.template_dir()
