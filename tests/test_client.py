"""client.py: the asyncio client, against the real server and against a scripted peer that
misbehaves (error replies, garbage, a connection cut mid-line)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dialogue_tts import errors
from dialogue_tts.client import Client, ServerError
from dialogue_tts.messages import (
    Audio,
    Error,
    Finished,
    Hello,
    Ping,
    Pong,
    Queued,
    Request,
    Say,
    Started,
    Welcome,
)
from dialogue_tts.protocol import HEADER_SIZE, NEED_DATA, Connection, Role

GUARD = 120  # seconds: only to turn a hang into a failure, never a performance check
LONG_LINE = (
    "Alone? At night? Wolves have been seen up there, and worse than wolves, if you believe "
    "the shepherds, and the shepherds have never lied to me about the mountain."
)


# --- against the real server -----------------------------------------------------------------


async def test_a_line_handle_gives_its_events_in_order(client: Client) -> None:
    assert client.welcome is not None and client.welcome.default_voice
    line = await client.say("guard", "Halt!", line="halt")
    assert (line.line, line.speaker, line.queued.line) == ("halt", "guard", "halt")
    async with asyncio.timeout(GUARD):
        events = [event async for event in line.events()]
    assert isinstance(events[0], Started) and isinstance(events[-1], Finished)
    assert all(isinstance(event, Audio) for event in events[1:-1]) and len(events) > 2
    assert events[-1].status == "done"
    assert [event.seq for event in events[1:-1]] == list(range(len(events) - 2))
    assert line.poll() == []  # nothing after Finished


async def test_poll_collects_what_arrived_without_waiting(client: Client) -> None:
    line = await client.say("guard", "Who goes there?")
    arrived: list[Any] = []
    async with asyncio.timeout(GUARD):
        while not arrived or not isinstance(arrived[-1], Finished):
            arrived += line.poll()
            await asyncio.sleep(0.01)
    result_audio = b"".join(event.data for event in arrived if isinstance(event, Audio))
    assert len(result_audio) == 2 * arrived[-1].samples  # s16le


async def test_wait_gathers_the_audio(client: Client) -> None:
    result = await (await client.say("guard", "Halt!")).wait()
    assert result.started is not None and result.finished.status == "done"
    assert len(result.audio) == 2 * result.finished.samples > 0
    assert result.seqs == list(range(len(result.seqs)))


async def test_skip_ends_the_playing_line(client: Client) -> None:
    line = await client.say("sage", LONG_LINE)
    events = line.events()
    async with asyncio.timeout(GUARD):
        assert isinstance(await anext(events), Started)
        skipped = await client.skip("sage")
        rest = [event async for event in events]
    assert (skipped.speaker, skipped.line) == ("sage", line.line)
    assert isinstance(rest[-1], Finished) and rest[-1].status == "skipped"


async def test_concurrent_requests_get_their_own_replies(client: Client) -> None:
    async with asyncio.timeout(GUARD):
        voices, status, rtt, line = await asyncio.gather(
            client.voices(), client.status(), client.ping(), client.say("a", "Hi.")
        )
        result = await line.wait()
    assert client.welcome is not None and voices == client.welcome.voices
    assert isinstance(status, dict) and rtt >= 0
    assert result.finished.line == line.line


async def test_an_error_reply_is_a_server_error_and_the_client_goes_on(client: Client) -> None:
    with pytest.raises(ServerError) as caught:
        await client.say("a", "Hi.", voice="no-such-voice")
    assert caught.value.code == errors.UNKNOWN_VOICE == caught.value.error.code
    assert "no-such-voice" in caught.value.message and caught.value.error.id is not None
    assert await client.ping() >= 0


# --- against a scripted peer ------------------------------------------------------------------


class Hangup(bytes):
    """A script's last answer: these bytes, then the connection closes."""


Script = Callable[[Request, Connection], bytes | None]
"""Bytes to answer a request (after hello) with; None closes the connection."""


def welcome(hello: Hello) -> Welcome:
    return Welcome(
        id=hello.id, protocol=1, server="scripted", voices=[], default_voice="none",
        max_frame=1024 * 1024, max_text=5000,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def scripted_server(
    script: Script,
    greet: Callable[[Hello], Any] = welcome,
    on_end: Callable[[], Any] = lambda: None,
) -> AsyncIterator[int]:
    """A server on a free port that answers hello with ``greet(hello)``, then runs
    ``script`` on every request; yields its port. ``on_end`` runs when a connection ends
    (the client hung up, or the script did)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(Role.SERVER)
        try:
            while data := await reader.read(65536):
                connection.receive_data(data)
                while (request := connection.next_message()) is not NEED_DATA:
                    assert isinstance(request, Request)
                    reply = (
                        connection.send(greet(request))
                        if isinstance(request, Hello)
                        else script(request, connection)
                    )
                    if reply is not None:
                        writer.write(reply)
                    if reply is None or isinstance(reply, Hangup):
                        await writer.drain()
                        return
                await writer.drain()
        finally:
            writer.close()
            on_end()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    "garbage",
    [
        (0x7FFFFFFF).to_bytes(HEADER_SIZE, "big"),  # a frame over any limit (fatal)
        (1).to_bytes(HEADER_SIZE, "big") + b"\xc1",  # a frame that is not msgpack
        (2).to_bytes(HEADER_SIZE, "big") + b"\x81\xa1",  # a truncated map
    ],
    ids=["frame-too-large", "not-msgpack", "truncated-map"],
)
async def test_garbage_from_the_server_fails_the_request_not_the_caller(garbage: bytes) -> None:
    async with scripted_server(lambda request, _: garbage) as port:
        client = await Client.connect(port=port)
        async with asyncio.timeout(GUARD):
            with pytest.raises(ConnectionError):
                await client.ping()
            await client.close()  # the read loop's end is not raised again here


async def test_a_connection_cut_mid_line_ends_the_line_with_connection_error() -> None:
    def start_then_hang_up(request: Request, connection: Connection) -> Hangup:
        assert isinstance(request, Say)
        queued = Queued(id=request.id, line="l1", speaker=request.speaker, position=0)
        started = Started(
            line="l1", speaker=request.speaker, voice="none", sample_rate=22050, channels=1,
            format="s16le",
        )  # fmt: skip
        return Hangup(connection.send(queued) + connection.send(started))

    async with scripted_server(start_then_hang_up) as port:
        client = await Client.connect(port=port)
        line = await client.say("guard", "Halt!")
        async with asyncio.timeout(GUARD):
            events = line.events()
            assert isinstance(await anext(events), Started)
            with pytest.raises(ConnectionError, match="before line 'l1' finished"):
                await anext(events)
            with pytest.raises(ConnectionError):
                await client.ping()
        await client.close()


async def test_events_for_no_request_or_line_are_unsolicited() -> None:
    def script(request: Request, connection: Connection) -> bytes:
        notice = Error(code=errors.INTERNAL_ERROR, message="something else went wrong")
        return connection.send(notice) + connection.send(Pong(id=request.id))

    async with scripted_server(script) as port, await Client.connect(port=port) as client:
        assert await client.ping() >= 0
        notice = client.unsolicited.get_nowait()
        assert (notice.TYPE, notice.id, notice.code) == ("error", None, errors.INTERNAL_ERROR)
        assert client.unsolicited.empty()


async def test_a_refused_hello_raises_and_closes_the_connection() -> None:
    hung_up = asyncio.Event()

    def refuse(hello: Hello) -> Error:
        return Error(id=hello.id, code=errors.UNAUTHORIZED, message="wrong token")

    def script(request: Request, connection: Connection) -> None:
        raise AssertionError(f"nothing should follow a refused hello: {request}")

    async with scripted_server(script, greet=refuse, on_end=hung_up.set) as port:
        with pytest.raises(ServerError) as caught:
            await Client.connect(port=port, token="guess")
        assert caught.value.code == errors.UNAUTHORIZED and caught.value.message == "wrong token"
        async with asyncio.timeout(GUARD):
            await hung_up.wait()  # the client closed its end


async def test_requests_are_sent_with_fresh_ids() -> None:
    seen: list[Any] = []

    def script(request: Request, connection: Connection) -> bytes:
        seen.append(request.id)
        return connection.send(Pong(id=request.id))

    async with scripted_server(script) as port, await Client.connect(port=port) as client:
        for _ in range(3):
            await client.ping()
        client.send(Ping(id="mine"))  # sent as is: its reply is nobody's
        async with asyncio.timeout(GUARD):
            stray = await client.unsolicited.get()
    assert stray == Pong(id="mine")
    assert len(set(seen[:3])) == 3 and seen[3] == "mine"


async def test_close_says_bye_and_can_be_repeated() -> None:
    seen: list[str] = []
    ended = asyncio.Event()

    def script(request: Request, connection: Connection) -> None:
        seen.append(request.TYPE)  # then the server hangs up

    async with scripted_server(script, on_end=ended.set) as port:
        client = await Client.connect(port=port)
        await client.close()
        await client.close()
        async with asyncio.timeout(GUARD):
            with pytest.raises(ConnectionError):  # no reply can come: it must not wait for one
                await client.ping()
            await ended.wait()
    assert seen == ["bye"]
