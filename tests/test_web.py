"""The WebSocket transport and the preview page, end to end with the real bundled voice.

The browser tests drive the system's Chromium (Debian's ``chromium`` package) with
Playwright; they skip only when /usr/bin/chromium is absent. The page's screenshot is kept
in $DIALOGUE_TTS_ARTIFACTS when set, else in pytest's temporary folder; the test prints
the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import msgpack
import numpy as np
import pytest
import soundfile
from helpers import VECTORS, ServerThread, engine_missing
from peers import WsPeer, web_port
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin

from dialogue_tts import errors
from dialogue_tts.cast import Cast
from dialogue_tts.messages import (
    Hello,
    Ping,
    Prepare,
    Say,
    Skip,
    Synthesize,
    SynthesizeScene,
)
from dialogue_tts.protocol import HEADER_SIZE, encode_frame
from dialogue_tts.server import ServerConfig
from dialogue_tts.websocket import MessageWriter, WebAccess, parse_origin

CHROMIUM = Path("/usr/bin/chromium")
GAME_ORIGIN = "http://localhost:8060"  # where Godot's web export serves a game by default
SAMPLE_RATE = 22050
GUARD = 120  # seconds: only to turn a hang into a failure, never a performance check
LONG_LINE = (
    "Alone? At night? Wolves have been seen up there, and worse than wolves, if you believe "
    "the shepherds, and the shepherds have never lied to me about the mountain."
)
CAST = Cast.from_dict(
    {
        "styles": {"whisper": {"volume": 0.4, "rate": 0.9}},
        "speakers": {"GUARD": {"pitch": 0.9, "styles": {"angry": {"rate": 1.15, "volume": 1.3}}}},
    },
    "test-cast.toml",
)
TOKEN = "tea+biscuits/=&#1"  # characters that a URL fragment must carry percent-encoded


@pytest.fixture(scope="module")
def web_server() -> Iterator[ServerThread]:
    config = ServerConfig(
        port=0, web_port=0, web_origins=(GAME_ORIGIN,), max_connections=8, cast=CAST
    )
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def token_server() -> Iterator[ServerThread]:
    server = ServerThread(ServerConfig(port=0, web_port=0, token=TOKEN)).start()
    yield server
    server.stop()


@pytest.fixture
async def peer(web_server: ServerThread) -> AsyncIterator[WsPeer]:
    opened = await WsPeer.open(web_server)
    yield opened
    await opened.close()


# --- the protocol over WebSocket ----------------------------------------------------------


async def test_welcome_say_audio_skip_over_websocket(peer: WsPeer) -> None:
    await peer.send(Say(id=1, speaker="inn", text=LONG_LINE, line="long"))
    await peer.send(Say(id=2, speaker="inn", text="Then I will take the pass.", line="next"))
    seen = [await peer.next_event()]
    while seen[-1].TYPE != "audio":  # queued, queued and started, in an order of the server's
        seen.append(await peer.next_event())
    assert [(event.TYPE, event.line) for event in seen if event.TYPE == "queued"] == [
        ("queued", "long"),
        ("queued", "next"),
    ]
    started, first_audio = next(event for event in seen if event.TYPE == "started"), seen[-1]
    assert (started.TYPE, started.line, started.sample_rate) == ("started", "long", SAMPLE_RATE)
    assert (first_audio.line, first_audio.seq) == ("long", 0)
    await peer.send(Skip(id=3, speaker="inn"))
    seen = [first_audio]
    while seen[-1].TYPE != "skipped":
        seen.append(await peer.next_event())
    finished, skipped = seen[-2], seen[-1]
    assert (finished.TYPE, finished.line, finished.status) == ("finished", "long", "skipped")
    assert (skipped.id, skipped.line) == (3, "long")
    audio = [event for event in seen if event.TYPE == "audio"]
    assert [event.seq for event in audio] == list(range(len(audio)))
    assert finished.samples == sum(len(event.data) // 2 for event in audio)
    # The next line starts at once and plays to the end: real speech, not silence.
    events = [await peer.next_event()]
    while events[-1].TYPE != "finished":
        events.append(await peer.next_event())
    assert events[0].TYPE == "started" and events[0].line == "next"
    assert events[-1].status == "done"
    samples = np.frombuffer(
        b"".join(event.data for event in events if event.TYPE == "audio"), dtype="<i2"
    )
    assert len(samples) == events[-1].samples
    assert 0.5 < len(samples) / SAMPLE_RATE < 5.0
    assert np.sqrt(np.mean((samples / 32768.0) ** 2)) > 0.02


@pytest.mark.parametrize(
    "vector",
    [vector for vector in VECTORS["bad_frames"] if vector["name"] != "frame_too_large"],
    ids=lambda vector: vector["name"],
)
async def test_bad_frames_over_websocket(web_server: ServerThread, vector: dict[str, Any]) -> None:
    """Each bad frame of vectors.json, as one message, gets its error; then a request works."""
    peer = await WsPeer.open(web_server, hello=not vector.get("before_hello"))
    await peer.websocket.send(bytes.fromhex(vector["frame_hex"])[HEADER_SIZE:])
    error = await peer.next_event()
    assert (error.TYPE, error.code, error.id) == ("error", vector["error"], vector.get("id"))
    if vector.get("closes"):
        with pytest.raises(ConnectionClosed) as closed:
            await peer.next_event()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        peer = await WsPeer.open(web_server)  # the server itself is fine
    elif vector.get("before_hello"):
        await peer.send(Hello(protocol=1, client="ws-test", id=0))
        assert (await peer.next_event()).TYPE == "welcome"
    await peer.send(Ping(id="still-here"))
    pong = await peer.next_event()
    assert (pong.TYPE, pong.id) == ("pong", "still-here")
    await peer.close()


async def test_message_of_max_frame_is_read_whole(peer: WsPeer) -> None:
    """A 1 MiB message reaches the handler over many reads, as one frame (padding ignored)."""
    padding = 1024 * 1024 - len(msgpack.packb({"type": "ping", "id": "big", "pad": b""}))
    # An empty bin's header is 2 bytes, a bin32's is 5: the padding is 3 bytes shorter.
    message = msgpack.packb({"type": "ping", "id": "big", "pad": b"x" * (padding - 3)})
    assert len(message) == 1024 * 1024
    await peer.websocket.send(message)
    pong = await peer.next_event()
    assert (pong.TYPE, pong.id) == ("pong", "big")


async def test_message_over_max_frame_closes_with_1009(peer: WsPeer) -> None:
    await peer.websocket.send(b"\x00" * (1024 * 1024 + 1))
    with pytest.raises(ConnectionClosed) as closed:
        await peer.next_event()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_text_message_closes_with_1003(peer: WsPeer) -> None:
    await peer.websocket.send('{"type": "ping"}')
    with pytest.raises(ConnectionClosed) as closed:
        await peer.next_event()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003
    assert "binary" in closed.value.rcvd.reason


async def test_connection_limit_counts_websocket_and_tcp(web_server: ServerThread) -> None:
    await web_server.wait_for_connections(at_most=0)
    tcp = await asyncio.open_connection("127.0.0.1", web_server.port)
    peers = [await WsPeer.open(web_server) for _ in range(7)]  # 8 with the TCP one
    extra = await WsPeer.open(web_server, hello=False)
    error = await extra.next_event()
    assert (error.TYPE, error.code) == ("error", errors.SERVER_BUSY)
    with pytest.raises(ConnectionClosed) as closed:
        await extra.next_event()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    for peer in peers:
        await peer.close()
    tcp[1].close()
    await web_server.wait_for_connections(at_most=0)
    again = await WsPeer.open(web_server)  # room again
    await again.close()


# --- whole scenes: synthesize_scene ---------------------------------------------------------

SCENE_LINES: list[dict[str, Any]] = [
    {"speaker": "GUARD", "text": "Halt! Who goes there?", "style": "angry"},
    {"speaker": "GUARD", "text": "Closer. Slowly.", "style": "whisper", "pitch": 1.2},
    {"speaker": "INNKEEPER", "text": "Only me, the innkeeper.", "pause": 0.5},
]


def wav_samples(data: bytes) -> np.ndarray:
    samples, sample_rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert sample_rate == SAMPLE_RATE and samples.ndim == 1
    return samples


async def test_synthesize_scene_is_its_lines_with_natural_gaps(peer: WsPeer) -> None:
    """The scene is each line as synthesize renders it (same cast, style and pitch), joined by
    preview.mix's gaps: 0.25 s within a speaker, 0.45 s at a change, plus a line's pause."""
    requests = [{k: v for k, v in line.items() if k != "pause"} for line in SCENE_LINES]
    # Prepared lines come from the cache, so every render below has the very same samples.
    for index, fields in enumerate(requests):
        await peer.send(Prepare(id=f"prepare-{index}", **fields))
        assert (await peer.next_event()).TYPE == "prepared"
    lines = []
    for index, fields in enumerate(requests):
        await peer.send(Synthesize(id=index, format="wav", **fields))
        lines.append(wav_samples((await peer.next_event()).data))

    await peer.send(SynthesizeScene(id="scene", lines=SCENE_LINES, format="wav"))
    reply = await peer.next_event()
    assert (reply.TYPE, reply.id, reply.format, reply.sample_rate) == (
        "audio_file", "scene", "wav", SAMPLE_RATE
    )  # fmt: skip

    def silence(seconds: float) -> np.ndarray:
        return np.zeros(round(seconds * SAMPLE_RATE), dtype=np.int16)

    expected = np.concatenate([lines[0], silence(0.25), lines[1], silence(0.45 + 0.5), lines[2]])
    scene = wav_samples(reply.data)
    assert len(scene) == len(expected) and np.array_equal(scene, expected)
    assert reply.duration == pytest.approx(len(expected) / SAMPLE_RATE)

    # The same scene as OGG Vorbis (which the page cannot encode), and with an even gap.
    await peer.send(SynthesizeScene(id="ogg", lines=SCENE_LINES, format="ogg", gap=1.0))
    reply = await peer.next_event()
    assert (reply.TYPE, reply.format) == ("audio_file", "ogg") and reply.data[:4] == b"OggS"
    ogg = decode(reply.data)
    even = sum(len(line) for line in lines) + len(silence(1.0)) * 2 + len(silence(0.5))
    assert abs(len(ogg) - even) < SAMPLE_RATE * 0.01
    assert np.sqrt(np.mean(ogg**2)) > 0.02  # speech, not silence


async def test_synthesize_scene_errors_name_the_line(peer: WsPeer) -> None:
    guard = {"speaker": "GUARD", "text": "Halt!"}
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"lines": [guard, {"speaker": "INNKEEPER", "text": "Hm.", "style": "angry"}]},
         errors.UNKNOWN_STYLE, "lines[1]: no style 'angry' for speaker 'INNKEEPER'"),
        ({"lines": [guard, guard, {**guard, "rate": 50.0}]},
         errors.INVALID_FIELD, "synthesize_scene.lines[2].rate: must be 0.1 to 10"),
        ({"lines": [guard, {**guard, "voice": "nobody"}]},
         errors.UNKNOWN_VOICE, "lines[1]: no voice named 'nobody'"),
        ({"lines": [guard, "Halt!"]}, errors.INVALID_FIELD, "synthesize_scene.lines[1]: expected"),
        ({"lines": [guard, {"speaker": "GUARD", "text": " "}]},
         errors.EMPTY_TEXT, "synthesize_scene.lines[1].text"),
        ({"lines": [guard] * 201}, errors.INVALID_FIELD, "at most 200"),
        ({"lines": [{**guard, "text": "x" * 4000}] * 3}, errors.TEXT_TOO_LONG, "12000 characters"),
        ({"lines": []}, errors.EMPTY_TEXT, "no lines"),
        ({"lines": [guard], "gap": -1.0}, errors.INVALID_FIELD, "synthesize_scene.gap"),
    ]  # fmt: skip
    for index, (fields, code, message) in enumerate(cases):
        await peer.websocket.send(
            msgpack.packb({"type": "synthesize_scene", "id": index, **fields})
        )
        error = await peer.next_event()
        assert (error.TYPE, error.id, error.code) == ("error", index, code), error
        assert message in error.message, error.message
    await peer.send(Ping(id="still-here"))
    assert (await peer.next_event()).id == "still-here"


async def test_synthesize_scene_counts_against_file_requests(peer: WsPeer) -> None:
    """Four synthesize requests are running (lines of half a minute): a scene must wait."""
    for index in range(4):
        await peer.send(Synthesize(id=index, text=" ".join([LONG_LINE] * 3)))
    await peer.send(SynthesizeScene(id="scene", lines=SCENE_LINES))
    error = await peer.next_event()
    assert (error.TYPE, error.id, error.code) == ("error", "scene", errors.QUEUE_FULL)


# --- who may connect ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "http://127.0.0.1:1", "null", "https://localhost:8060"]
)
async def test_foreign_origin_is_refused(web_server: ServerThread, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await WsPeer.open(web_server, origin=origin)
    assert refused.value.response.status_code == 403
    assert b"--web-origin" in refused.value.response.body


async def test_allowed_origins_are_accepted(web_server: ServerThread) -> None:
    port = web_port(web_server)
    own = [f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"]
    for origin in [*own, GAME_ORIGIN, None]:  # None: a native program sends no Origin
        peer = await WsPeer.open(web_server, origin=origin, hello=False)
        await peer.send(Hello(protocol=1, client="ws-test", id="h"))
        welcome = await peer.next_event()
        await peer.send(Ping(id="p"))
        pong = await peer.next_event()
        await peer.close()
        assert (welcome.TYPE, welcome.id, pong.TYPE, pong.id) == ("welcome", "h", "pong", "p")


async def test_token_server_refuses_a_websocket_hello_without_it(
    token_server: ServerThread,
) -> None:
    for token in [None, "tea"]:
        peer = await WsPeer.open(token_server, hello=False)
        await peer.send(Hello(protocol=1, client="ws-test", id="h", token=token))
        error = await peer.next_event()
        assert (error.TYPE, error.code, error.id) == ("error", errors.UNAUTHORIZED, "h")
        with pytest.raises(ConnectionClosed) as closed:
            await peer.next_event()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
    peer = await WsPeer.open(token_server, token=TOKEN)  # fails unless welcomed
    await peer.close()


def test_page_url_carries_the_token_in_its_fragment(
    web_server: ServerThread, token_server: ServerThread
) -> None:
    assert web_server.server is not None and web_server.server.web is not None
    web = web_server.server.web
    assert web.page_url() == web.page_url(None) == f"http://127.0.0.1:{web.port}/"
    assert web.page_url(TOKEN) == f"http://127.0.0.1:{web.port}/#token=tea%2Bbiscuits%2F%3D%26%231"
    # The page's files never hold the token: any local program could fetch them.
    port = web_port(token_server)
    for path in ["/", "/app.js", "/msgpack.js", "/tap-worklet.js", "/style.css"]:
        status, _, body = http_get(port, path)
        assert status == 200, path
        assert TOKEN.encode() not in body and quote(TOKEN, safe="").encode() not in body, path


def test_origin_allowlist_parsing() -> None:
    assert parse_origin("HTTP://LocalHost:8060/") == "http://localhost:8060"
    for bad in ["null", "*", "localhost:8060", "http://x.example/game", "file:///tmp/a.html"]:
        with pytest.raises(ValueError):
            parse_origin(bad)
    access = WebAccess.for_port(5758, "127.0.0.1", ["https://game.example"], allow_remote=False)
    assert "https://game.example" in access.origins and "http://127.0.0.1:5758" in access.origins
    assert "127.0.0.1:5758" in access.hosts and "evil.example:5758" not in access.hosts


def http_get(port: int, path: str, host: str | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=GUARD) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_page_files_are_served(web_server: ServerThread) -> None:
    port = web_port(web_server)
    status, content_type, body = http_get(port, "/")
    assert (status, content_type) == (200, "text/html; charset=utf-8")
    assert b'<script type="module" src="app.js">' in body
    for path in ["/app.js", "/msgpack.js", "/tap-worklet.js"]:
        assert http_get(port, path)[:2] == (200, "text/javascript; charset=utf-8")
    assert http_get(port, "/style.css")[:2] == (200, "text/css; charset=utf-8")
    for path in ["/../pyproject.toml", "/websocket.py", "/web/app.js", "/%2e%2e/server.py"]:
        assert http_get(port, path)[0] == 404
    # A DNS-rebinding page reaches 127.0.0.1 under its own name: refused.
    assert http_get(port, "/", host=f"evil.example:{port}")[0] == 403


def test_serve_web_prints_the_page_with_its_token_and_checks_origins(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "dialogue_tts", "serve", "--port", "0", "--web"]
    refused = subprocess.run(
        [*command, "--web-origin", "null"], capture_output=True, text=True, timeout=GUARD
    )
    assert refused.returncode == 1 and "not a web origin" in refused.stderr
    process = subprocess.Popen(
        [*command, "--web-port", "0", "--web-origin", GAME_ORIGIN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "DIALOGUE_TTS_TOKEN": TOKEN},
    )  # fmt: skip
    try:
        assert process.stdout is not None
        listening = process.stdout.readline()
        assert re.fullmatch(r"dialogue-tts listening on 127\.0\.0\.1:\d+\n", listening), listening
        assert "must send the token" in process.stdout.readline()
        page = process.stdout.readline()
        # The token goes in the fragment, which the browser keeps to itself.
        match = re.fullmatch(r"preview page: http://127\.0\.0\.1:(\d+)/#token=(\S+)\n", page)
        assert match and match.group(2) == quote(TOKEN, safe=""), page
        port = int(match.group(1))
        assert http_get(port, "/")[0] == 200

        async def hello_from_the_game() -> str:
            async with connect(f"ws://127.0.0.1:{port}/", origin=Origin(GAME_ORIGIN)) as websocket:
                peer = WsPeer(websocket)
                await peer.send(Hello(protocol=1, client="game", token=TOKEN))
                return str((await peer.next_event()).TYPE)

        assert asyncio.run(hello_from_the_game()) == "welcome"
    finally:
        process.terminate()
        process.wait(GUARD)


# --- the writer adapter's back-pressure ------------------------------------------------------


class StalledWebSocket:
    """A websocket whose peer reads nothing until ``release`` is set."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.release = asyncio.Event()
        self.aborted = False
        self.state = State.OPEN
        self.transport = SimpleNamespace(
            is_closing=lambda: self.aborted,
            get_write_buffer_size=lambda: 0,
            abort=self._abort,
        )

    def _abort(self) -> None:
        self.aborted = True

    async def send(self, message: memoryview) -> None:
        await self.release.wait()
        self.sent.append(bytes(message))

    async def close(self, code: int, reason: str) -> None:
        self.sent.append(f"close {code}".encode())


async def test_message_writer_sends_whole_frames_in_order_with_back_pressure() -> None:
    websocket = StalledWebSocket()
    writer = MessageWriter(websocket)  # type: ignore[arg-type]
    frames = [encode_frame(Ping(id=index)) for index in range(3)]
    big = b"\x00\x01\x00\x00" + b"\x90" * 65536  # one 64 KiB frame: over the low-water mark
    for frame in [*frames, big]:
        writer.write(frame)
    assert (
        writer.transport.get_write_buffer_size()
        == sum(len(f) - HEADER_SIZE for f in frames) + 65536
    )
    drain = asyncio.create_task(writer.drain())
    await asyncio.sleep(0)
    assert not drain.done()  # the peer reads nothing: drain must wait
    websocket.release.set()
    async with asyncio.timeout(GUARD):
        await drain
    assert websocket.sent[:3] == [frame[HEADER_SIZE:] for frame in frames]  # prefix stripped
    with pytest.raises(ValueError):
        writer.write(frames[0] + b"\x00")  # a byte too many: it takes exactly one frame
    writer.close()
    async with asyncio.timeout(GUARD):
        await writer.wait_closed()
    assert websocket.sent[-1] == b"close 1000" and writer.is_closing() and writer.finished


async def test_message_writer_abort_drops_queued_messages() -> None:
    websocket = StalledWebSocket()
    writer = MessageWriter(websocket)  # type: ignore[arg-type]
    writer.write(encode_frame(Ping(id=1)))
    writer.abort()
    assert websocket.aborted and writer.transport.get_write_buffer_size() == 0
    async with asyncio.timeout(GUARD):
        await writer.drain()  # nobody waits on a dropped client
        await writer.wait_closed()
    writer.write(encode_frame(Ping(id=2)))  # ignored, as on a closed StreamWriter
    assert websocket.sent == []


# --- the page in headless Chromium ---------------------------------------------------------

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
TWO_LINE_SCENE = f"# a comment\nINNKEEPER: {LONG_LINE}\nTRAVELER: Thank you. I will go at dawn.\n"
GUARD_MS = GUARD * 1000


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    if not CHROMIUM.exists():
        engine_missing(
            "needs Debian's chromium package at /usr/bin/chromium (apt-get install chromium)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # Playwright gives each launch a fresh temporary profile (user-data-dir).
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(accept_downloads=True)
            page = context.new_page()
            errors_seen: list[str] = []
            page.on("pageerror", lambda error: errors_seen.append(str(error)))
            yield page
            assert errors_seen == [], errors_seen
        finally:
            browser.close()


def artifact_dir(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DIALOGUE_TTS_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_msgpack_js_matches_the_vectors(web_server: ServerThread) -> None:
    with chromium_page() as page:
        page.goto(f"http://127.0.0.1:{web_port(web_server)}/")
        results = page.evaluate(
            """async (vectors) => {
                const { encode, decode } = await import("/msgpack.js");
                const fromHex = (hex) =>
                    Uint8Array.from(hex.match(/../g) ?? [], (b) => parseInt(b, 16));
                const toHex = (bytes) =>
                    [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
                const fromJson = (value) => Array.isArray(value) ? value.map(fromJson)
                    : value && typeof value === "object" ? ("$bin" in value ? fromHex(value.$bin)
                    : Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fromJson(v)])))
                    : value;
                const toJson = (value) => value instanceof Uint8Array ? { $bin: toHex(value) }
                    : Array.isArray(value) ? value.map(toJson)
                    : value && typeof value === "object"
                    ? Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJson(v)]))
                    : value;
                const cases = [...vectors.requests, ...vectors.events].map((vector) => {
                    const payload = fromHex(vector.frame_hex).subarray(4);
                    return { name: vector.name, encoded: toHex(encode(fromJson(vector.message))),
                             decoded: toJson(decode(payload)) };
                });
                const rejected = vectors.bad_frames
                    .filter((v) => v.error === "invalid_frame" && v.frame_hex.length > 8)
                    .map((v) => { try { decode(fromHex(v.frame_hex).subarray(4)); return null; }
                                  catch { return v.name; } });
                return { cases, rejected };
            }""",
            VECTORS,
        )
    vectors = [*VECTORS["requests"], *VECTORS["events"]]
    assert [case["name"] for case in results["cases"]] == [v["name"] for v in vectors]
    for case, vector in zip(results["cases"], vectors, strict=True):
        assert case["encoded"] == vector["frame_hex"][2 * HEADER_SIZE :], vector["name"]
        assert case["decoded"] == vector["message"], vector["name"]
    expected = [v["name"] for v in VECTORS["bad_frames"] if v["error"] == "invalid_frame"]
    assert results["rejected"] == [name for name in expected if name != "empty_frame"]


def test_preview_page_plays_skips_and_downloads(
    web_server: ServerThread, tmp_path: Path, record_property: Any
) -> None:
    with chromium_page() as page:
        open_preview(page, web_port(web_server))
        page.fill("#scene", TWO_LINE_SCENE)
        assert page.locator("#cast tbody th").all_inner_texts() == ["INNKEEPER", "TRAVELER"]
        page.fill("#cast tbody tr:nth-child(2) input.rate", "1.2")  # the traveler speaks faster
        page.locator("#cast tbody tr:nth-child(2) input.rate").dispatch_event("change")

        page.click("#play")
        # The first line is heard: samples came out of the Web Audio graph's tap.
        wait_for(
            page,
            "() => dialoguePreview.statuses()[0] === 'playing' "
            "&& dialoguePreview.stats.heardSamples > 0",
        )
        assert page.locator("#now-playing").inner_text().startswith("Playing INNKEEPER")
        page.click("#skip")
        wait_for(
            page,
            "() => dialoguePreview.statuses()[0] === 'skipped' "
            "&& dialoguePreview.statuses()[1] === 'playing'",
        )
        heard_before_second = page.evaluate("dialoguePreview.stats.heardSamples")
        wait_for(  # a quarter second of the second line's sound reached the graph
            page,
            "(before) => dialoguePreview.stats.heardSamples > "
            "before + dialoguePreview.stats.contextRate / 4",
            heard_before_second,
        )
        screenshot = artifact_dir(tmp_path) / "preview-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"preview page screenshot: {screenshot}")
        record_property("screenshot", str(screenshot))
        wait_for(page, "() => dialoguePreview.statuses()[1] === 'done'")
        assert page.evaluate("dialoguePreview.results()") == ["skipped", "done"]
        stats = page.evaluate("dialoguePreview.stats")
        assert stats["peak"] > 0.05  # speech, not a trickle of rounding noise
        # The second line went through the graph whole: the samples heard while it played
        # (at the context's rate) are most of those received (at 22.05 kHz), allowing for the
        # tap's 0.1 s reporting and for part of the line heard before the wait above saw it.
        received = page.evaluate("dialoguePreview.receivedSamples()")[1]
        heard = stats["heardSamples"] - heard_before_second
        assert heard > 0.5 * received * stats["contextRate"] / SAMPLE_RATE

        line_wav = download(page, "#lines li[data-index='1'] .download-wav")
        line_ogg = download(page, "#lines li[data-index='1'] .download-ogg")
        first_wav = download(page, "#lines li[data-index='0'] .download-wav")
        scene_wav = download(page, "#download-scene-wav")

    for name, data in [("line.wav", line_wav), ("line.ogg", line_ogg), ("scene.wav", scene_wav)]:
        (artifact_dir(tmp_path) / name).write_bytes(data)
    first, second, ogg, scene = (
        decode(data) for data in (first_wav, line_wav, line_ogg, scene_wav)
    )
    assert line_wav[:4] == b"RIFF" and line_ogg[:4] == b"OggS"
    for audio in (first, second, ogg, scene):
        assert np.sqrt(np.mean(audio**2)) > 0.02  # speech, not silence
    assert 0.8 < len(ogg) / len(second) < 1.25  # the same line (synthesis varies a little)
    # The scene is both lines with a 0.45 s gap between speakers (each render of a line varies
    # a little).
    expected = len(first) + len(second) + round(0.45 * SAMPLE_RATE)
    assert 0.85 < len(scene) / expected < 1.15


STYLED_SCENE = """GUARD: Halt! Who goes there?
GUARD (whisper): Closer. Slowly.
(pause 0.5)
innkeeper: Only me, the innkeeper.
"""


def test_preview_page_offers_the_cast_styles_and_pitch(
    web_server: ServerThread, tmp_path: Path
) -> None:
    """The page asks for the cast: each character gets the styles the cast defines for it (its
    own and the shared ones) and a pitch; a line's own (style) wins; say requests and the
    scene download carry speaker, style and pitch; the OGG scene decodes."""
    with chromium_page() as page:
        sent = frames_sent(page)
        open_preview(page, web_port(web_server))
        page.fill("#scene", STYLED_SCENE)
        assert page.locator("#cast tbody th").all_inner_texts() == ["GUARD", "innkeeper"]
        assert page.locator("#lines .speaker").all_inner_texts() == [
            "GUARD", "GUARD (whisper)", "innkeeper"
        ]  # fmt: skip
        options = [
            page.locator(f"#cast tbody tr:nth-child({row}) select.style option").all_inner_texts()
            for row in (1, 2)
        ]
        assert options == [["none", "angry", "whisper"], ["none", "whisper"]]
        assert "test-cast.toml" in page.inner_text("#cast-source")
        page.select_option("#cast tbody tr:nth-child(1) select.style", "angry")
        page.fill("#cast tbody tr:nth-child(1) input.pitch", "1.2")
        page.locator("#cast tbody tr:nth-child(1) input.pitch").dispatch_event("change")

        page.focus("#play")  # from the keyboard
        page.keyboard.press("Enter")
        wait_for(page, "() => dialoguePreview.results().join() === 'done,done,done'")
        received = page.evaluate("dialoguePreview.receivedSamples()")
        scene_ogg = download(page, "#download-scene-ogg")

        page.reload()  # the choices are kept
        wait_for(page, PAGE_READY)
        assert page.input_value("#cast tbody tr:nth-child(1) select.style") == "angry"
        assert page.input_value("#cast tbody tr:nth-child(1) input.pitch") == "1.2"

    says = [message for message in sent if message["type"] == "say"]
    assert [(m["speaker"], m.get("style"), m["pitch"]) for m in says] == [
        ("GUARD", "angry", 1.2), ("GUARD", "whisper", 1.2), ("innkeeper", None, 1.0)
    ]  # fmt: skip
    assert all(isinstance(m["pitch"], float) and "voice" not in m for m in says)  # as cast
    (scene,) = [message for message in sent if message["type"] == "synthesize_scene"]
    assert scene["format"] == "ogg"
    assert [(line.get("style"), line.get("pause")) for line in scene["lines"]] == [
        ("angry", None), ("whisper", None), (None, 0.5)
    ]  # fmt: skip
    (artifact_dir(tmp_path) / "scene.ogg").write_bytes(scene_ogg)
    assert scene_ogg[:4] == b"OggS"
    audio = decode(scene_ogg)  # soundfile reads OGG Vorbis
    assert np.sqrt(np.mean(audio**2)) > 0.02
    # The three lines as they were heard, and the gaps: 0.25 s within GUARD's lines, then
    # 0.45 s at the change of speaker plus the 0.5 s pause (each render varies a little).
    expected = sum(received) + round((0.25 + 0.45 + 0.5) * SAMPLE_RATE)
    assert 0.85 < len(audio) / expected < 1.15


def test_preview_page_sends_the_token_from_its_address(token_server: ServerThread) -> None:
    """Without the token in its address the page says so; with it, the page works."""
    port = web_port(token_server)
    with chromium_page() as page:
        sent = frames_sent(page)
        page.goto(f"http://127.0.0.1:{port}/")
        wait_for(page, "() => document.querySelector('#connection').textContent"
                       ".includes('needs a token')")  # fmt: skip
        assert page.evaluate("dialoguePreview.ready") is False
        assert page.is_disabled("#play") and page.is_disabled("#download-scene-ogg")
        # The address that serve printed: the page connects again at once.
        page.goto(f"http://127.0.0.1:{port}/#token={quote(TOKEN, safe='')}")
        wait_for(page, PAGE_READY)
        page.reload()  # and opened with the token from the start
        wait_for(page, PAGE_READY)
        line = decode(download(page, "#lines li[data-index='0'] .download-wav"))
    hellos = [message for message in sent if message["type"] == "hello"]
    assert [hello.get("token") for hello in hellos] == [None, TOKEN, TOKEN]
    assert np.sqrt(np.mean(line**2)) > 0.02


LEXICON_SCENE = "GUARD: Halt, Aelindra! Nggh.\nTRAVELER: Thank you.\n"


def test_preview_page_shows_the_lexicons_words_and_tries_a_respelling(tmp_path: Path) -> None:
    """Under each line, the words the cast's lexicon changes; a respelling tried in the form
    is checked by the server, heard at once in the line that has the word, and kept for
    every line until cleared; a bad one is refused with the server's reason."""
    cast = Cast.from_dict({"lexicon": {"Aelindra": "ay-LIN-dra", "Nggh": "ung"}}, "names.toml")
    server = ServerThread(ServerConfig(port=0, web_port=0, cast=cast)).start()
    chips = "#lines li[data-index='0'] .words button"
    try:
        with chromium_page() as page:
            sent = frames_sent(page)
            open_preview(page, web_port(server))
            page.fill("#scene", LEXICON_SCENE)
            page.wait_for_function(
                "(n) => document.querySelectorAll(n).length === 2", arg=chips, timeout=GUARD_MS
            )
            assert page.locator(chips).all_inner_texts() == [
                "Aelindra → /eɪlˈɪndɹɑː/", "Nggh → /ˈʌŋ/"
            ]  # fmt: skip
            assert page.locator("#lines li[data-index='1'] .words button").count() == 0

            page.click(f"{chips} >> nth=0")  # a changed word fills the form
            assert page.input_value("#try-word") == "Aelindra"
            assert page.input_value("#try-value") == "ay-LIN-dra"
            page.fill("#try-value", "EL-in-dra")
            page.click("#try-hear")
            wait_for(page, "() => dialoguePreview.results().join() === 'done'")
            assert page.inner_text("#try-result") == 'Aelindra = "EL-in-dra" # said /ˈɛlɪndɹɑː/'
            page.wait_for_function(
                "(n) => document.querySelector(n)?.textContent === 'Aelindra → /ˈɛlɪndɹɑː/'",
                arg=chips, timeout=GUARD_MS,
            )  # fmt: skip

            page.fill("#try-word", "Nggh")
            page.fill("#try-value", "/ŋ☃/")
            page.click("#try-hear")
            wait_for(page, "() => document.querySelector('#message').textContent !== ''")
            assert page.inner_text("#message").startswith(
                "invalid_field: pronounce.lexicon: Nggh: voice 'en_US-joe-medium' has no phoneme"
            )
            assert page.evaluate("dialoguePreview.tries()") == {"Aelindra": "EL-in-dra"}
            page.click("#try-clear")
            page.wait_for_function(
                "(n) => document.querySelector(n)?.textContent === 'Aelindra → /eɪlˈɪndɹɑː/'",
                arg=chips, timeout=GUARD_MS,
            )  # fmt: skip
            assert page.is_disabled("#try-clear")
    finally:
        server.stop()
    says = [message for message in sent if message["type"] == "say"]
    assert [(m["text"], m.get("lexicon")) for m in says] == [
        ("Halt, Aelindra! Nggh.", {"Aelindra": "EL-in-dra"})
    ]  # fmt: skip


KOKORO_RATE = 24_000


def test_preview_page_offers_and_plays_kokoro_voices(kokoro_dir: Path) -> None:
    """With Kokoro's files in the voices folder, the page lists its 54 voices with their
    language and gender; a line cast to one by the server's cast, and a Japanese line given
    one in the page, are said in those voices at 24 kHz and heard in full; the scene
    download is 24 kHz too (its voices' highest rate)."""
    cast = Cast.from_dict({"speakers": {"MIRA": {"voice": "kokoro:af_heart"}}}, "kokoro.toml")
    config = ServerConfig(port=0, web_port=0, cast=cast)
    server = ServerThread(config, voices_dir=kokoro_dir).start()
    received: list[dict[str, Any]] = []
    try:
        with chromium_page() as page:
            page.on(
                "websocket",
                lambda ws: ws.on(
                    "framereceived", lambda data: received.append(msgpack.unpackb(data))
                ),
            )
            open_preview(page, web_port(server))
            page.fill("#scene", "MIRA: Only us, friend.\nAIKO: こんにちは。\n")
            options = page.locator("#cast tbody tr:nth-child(2) select.voice option")
            labels = options.all_inner_texts()
            assert len([label for label in labels if label.startswith("kokoro:")]) == 54
            assert "kokoro:jf_alpha · ja · female" in labels
            assert "kokoro:bm_george · en-GB · male" in labels
            mira_voice = page.locator("#cast tbody tr:nth-child(1) select.voice option")
            assert mira_voice.first.inner_text() == "as cast (kokoro:af_heart)"
            page.select_option("#cast tbody tr:nth-child(2) select.voice", "kokoro:jf_alpha")

            page.click("#play")
            wait_for(page, "() => dialoguePreview.results().join() === 'done,done'")
            samples = page.evaluate("dialoguePreview.receivedSamples()")
            # Both lines went through the Web Audio graph, at the context's rate (the tap
            # counts samples that are not exactly 0, so a line's quietest ones are not heard).
            wait_for(
                page,
                "(total) => dialoguePreview.stats.heardSamples > "
                f"total / 2 * dialoguePreview.stats.contextRate / {KOKORO_RATE}",
                sum(samples),
            )
            scene = download(page, "#download-scene-wav")
            stats = page.evaluate("dialoguePreview.stats")
    finally:
        server.stop()
    started = [(m["speaker"], m["voice"], m["sample_rate"]) for m in received
               if m["type"] == "started"]  # fmt: skip
    assert started == [
        ("MIRA", "kokoro:af_heart", KOKORO_RATE), ("AIKO", "kokoro:jf_alpha", KOKORO_RATE)
    ]  # fmt: skip
    assert all(0.4 * KOKORO_RATE < count < 4 * KOKORO_RATE for count in samples), samples
    assert stats["peak"] > 0.05  # speech, not a trickle of rounding noise
    heard = stats["heardSamples"] * KOKORO_RATE / stats["contextRate"]
    assert heard < 1.05 * sum(samples)  # and each once
    audio, rate = soundfile.read(io.BytesIO(scene), dtype="float32")
    assert rate == KOKORO_RATE and np.sqrt(np.mean(audio**2)) > 0.02
    assert len(audio) == pytest.approx(sum(samples) + 0.45 * KOKORO_RATE, rel=0.02)


PAGE_READY = "() => window.dialoguePreview?.ready === true"


def open_preview(page: Any, port: int) -> None:
    """Open the preview page of the server on ``port`` and wait until it is connected."""
    page.goto(f"http://127.0.0.1:{port}/")
    wait_for(page, PAGE_READY)


def frames_sent(page: Any) -> list[dict[str, Any]]:
    """Every message the page sends over a WebSocket from now on, decoded, as it goes."""
    sent: list[dict[str, Any]] = []
    page.on(
        "websocket",
        lambda ws: ws.on("framesent", lambda data: sent.append(msgpack.unpackb(data))),
    )
    return sent


def wait_for(page: Any, predicate: str, argument: Any = None) -> None:
    """Wait until the JS function ``predicate`` is true (a function: the page's CSP forbids
    Playwright evaluating a bare expression string)."""
    page.wait_for_function(predicate, arg=argument, timeout=GUARD_MS, polling=50)


def download(page: Any, selector: str) -> bytes:
    with page.expect_download(timeout=GUARD_MS) as info:
        page.click(selector)
    path = info.value.path()
    return Path(path).read_bytes()


def decode(data: bytes) -> np.ndarray:
    audio, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32")
    assert sample_rate == SAMPLE_RATE and audio.ndim == 1
    return audio
