"""A small asyncio client for dialogue-tts.

    async with await Client.connect() as client:
        line = await client.say("guard", "Halt! Who goes there?")
        async for event in line.events():
            ...  # Started, then Audio chunks, then Finished

Replies are matched to requests by "id"; a line's events go to its ``LineHandle``;
anything else (an error with no id, say) lands in ``Client.unsolicited``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from .errors import RemoteProtocolError
from .messages import (
    PROTOCOL_VERSION,
    Audio,
    AudioFile,
    Bye,
    Cancel,
    Cancelled,
    CastReport,
    CastRequest,
    Clear,
    Cleared,
    Error,
    Event,
    Finished,
    Hello,
    LineId,
    Marks,
    Pause,
    Paused,
    Ping,
    Prepare,
    Prepared,
    Queued,
    Request,
    Resume,
    Resumed,
    Say,
    Skip,
    Skipped,
    Started,
    StatusReport,
    StatusRequest,
    Synthesize,
    SynthesizeScene,
    VoiceList,
    VoicesRequest,
    Welcome,
)
from .protocol import CLOSED, DEFAULT_HOST, DEFAULT_PORT, NEED_DATA, Connection, Role

__all__ = ["Client", "LineHandle", "LineResult", "ServerError"]


class ServerError(Exception):
    """The server answered a request with an error event."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.code = error.code
        self.message = error.message
        self.error = error


@dataclass
class LineResult:
    """Everything a line produced, gathered by ``LineHandle.wait``."""

    finished: Finished
    started: Started | None = None
    audio: bytearray = field(default_factory=bytearray)
    seqs: list[int] = field(default_factory=list)
    marks: list[Marks] = field(default_factory=list)
    """Word / phoneme / viseme timings, when the line asked for them."""


class LineHandle:
    """The events of one queued line, in order, ending with its Finished."""

    def __init__(self, queued: Queued) -> None:
        self.queued = queued
        self.line: LineId = queued.line
        self.speaker = queued.speaker
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._lost: ConnectionError | None = None

    def _put(self, event: Event | None) -> None:
        self._events.put_nowait(event)

    def _connection_lost(self, why: ConnectionError) -> None:
        self._lost = why
        self._events.put_nowait(None)

    def _cut_off(self) -> ConnectionError:
        why = f": {self._lost}" if self._lost is not None else ""
        return ConnectionError(f"connection lost before line {self.line!r} finished{why}")

    def poll(self) -> list[Event]:
        """The events that have arrived, without waiting (for game loops); may be empty.

        After the Finished event, returns []. Raises ConnectionError if the connection was
        lost before the line finished.
        """
        arrived: list[Event] = []
        while not self._events.empty():
            event = self._events.get_nowait()
            if event is None:
                raise self._cut_off() from self._lost
            arrived.append(event)
        return arrived

    async def events(self) -> AsyncIterator[Event]:
        """Started, Marks and Audio..., then Finished (always last). Raises ConnectionError
        if cut off."""
        while True:
            event = await self._events.get()
            if event is None:
                raise self._cut_off() from self._lost
            yield event
            if isinstance(event, Finished):
                return

    async def wait(self) -> LineResult:
        """Collect the line's audio until it finishes."""
        started: Started | None = None
        audio = bytearray()
        seqs: list[int] = []
        marks: list[Marks] = []
        async for event in self.events():
            if isinstance(event, Started):
                started = event
            elif isinstance(event, Audio):
                audio += event.data
                seqs.append(event.seq)
            elif isinstance(event, Marks):
                marks.append(event)
            elif isinstance(event, Finished):
                return LineResult(event, started, audio, seqs, marks)
        raise AssertionError("events() always ends with Finished")


class Client:
    """One connection to a dialogue-tts server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._connection = Connection(Role.CLIENT)
        self._ids = itertools.count(1)
        self._pending: dict[int | str, asyncio.Future[Event]] = {}
        self._lines: dict[LineId, LineHandle] = {}
        self.unsolicited: asyncio.Queue[Event] = asyncio.Queue()
        """Events that answer no request and belong to no known line."""
        self.welcome: Welcome | None = None
        self.lost: ConnectionError | None = None
        """Why the connection ended, once it has (a closed socket, or a server that broke
        the protocol); requests sent after that fail with it."""
        self._reader_task = asyncio.create_task(self._read_loop(), name="dialogue-tts-client")

    @classmethod
    async def connect(
        cls,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        unix_path: str | Path | None = None,
        client_name: str = "dialogue-tts-python",
        pace: bool = True,
        hello: bool = True,
        token: str | None = None,
        cast: dict[str, Any] | str | None = None,
        timings: list[str] | None = None,
    ) -> Self:
        """Connect and (unless ``hello`` is False) do the handshake.

        ``token`` is the server's shared secret, if it has one; ``cast`` replaces the
        server's cast for this connection (a cast map, or a cast file's TOML text);
        ``timings`` asks "marks" events for every line ("word", "phoneme", "viseme").
        """
        if unix_path is not None:
            reader, writer = await asyncio.open_unix_connection(str(unix_path))
        else:
            reader, writer = await asyncio.open_connection(host, port)
        client = cls(reader, writer)
        if hello:
            try:
                await client.hello(client_name, pace=pace, token=token, cast=cast, timings=timings)
            except BaseException:
                await client.close(bye=False)
                raise
        return client

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:  # fmt: skip
        await self.close()

    # --- requests -----------------------------------------------------------------------

    async def request(self, message: Request) -> Event:
        """Send a request with a fresh id and return its reply (raises ServerError)."""
        if self.lost is not None:
            raise self.lost
        request_id = next(self._ids)
        message = replace(message, id=request_id)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            self.send(message)
            return await future
        finally:
            self._pending.pop(request_id, None)

    def send(self, message: Request) -> None:
        """Send without waiting for a reply; raises ConnectionError once the connection is
        closed or lost (no reply could ever come)."""
        if self._reader_task.done():
            raise ConnectionError("connection closed")
        self._writer.write(self._connection.send(message))

    async def hello(
        self,
        client_name: str = "dialogue-tts-python",
        *,
        pace: bool = True,
        token: str | None = None,
        cast: dict[str, Any] | str | None = None,
        timings: list[str] | None = None,
    ) -> Welcome:
        hello = Hello(
            protocol=PROTOCOL_VERSION, client=client_name, pace=pace, token=token, cast=cast,
            timings=timings,
        )  # fmt: skip
        reply = await self.request(hello)
        assert isinstance(reply, Welcome)
        self.welcome = reply
        return reply

    async def say(self, speaker: str, text: str, **options: Any) -> LineHandle:
        """Queue a line; options are Say's fields (line, voice, interrupt, format, ...)."""
        reply = await self.request(Say(speaker=speaker, text=text, **options))
        assert isinstance(reply, Queued)
        return self._lines[reply.line]

    async def skip(self, speaker: str) -> Skipped:
        return _expect(await self.request(Skip(speaker=speaker)), Skipped)

    async def cancel(self, line: LineId) -> Cancelled:
        return _expect(await self.request(Cancel(line=line)), Cancelled)

    async def clear(self, speaker: str | None = None) -> Cleared:
        return _expect(await self.request(Clear(speaker=speaker)), Cleared)

    async def pause(self, speaker: str | None = None) -> Paused:
        return _expect(await self.request(Pause(speaker=speaker)), Paused)

    async def resume(self, speaker: str | None = None) -> Resumed:
        return _expect(await self.request(Resume(speaker=speaker)), Resumed)

    async def voices(self) -> list[dict[str, Any]]:
        return _expect(await self.request(VoicesRequest()), VoiceList).voices

    async def cast(self) -> dict[str, Any]:
        """This connection's cast, shaped like a cast file, with "source"."""
        return _expect(await self.request(CastRequest()), CastReport).cast

    async def status(self) -> dict[str, Any]:
        """This connection's speakers: {name: {current, queued, paused}}."""
        return (await self.status_report()).speakers

    async def status_report(self) -> StatusReport:
        """The whole status reply, with the server's cache counters."""
        return _expect(await self.request(StatusRequest()), StatusReport)

    async def synthesize(self, text: str, **options: Any) -> AudioFile:
        """A whole line as one file; options are Synthesize's fields (voice, format, ...)."""
        return _expect(await self.request(Synthesize(text=text, **options)), AudioFile)

    async def synthesize_scene(self, lines: list[dict[str, Any]], **options: Any) -> AudioFile:
        """A whole scene as one file, with natural gaps: ``lines`` are maps of speaker, text
        and optionally style, voice, rate, pitch, volume, pause; options are format, gap,
        markup."""
        return _expect(await self.request(SynthesizeScene(lines=lines, **options)), AudioFile)

    async def prepare(self, text: str, **options: Any) -> Prepared:
        """Have a line synthesized ahead so that a later say of it starts at once."""
        return _expect(await self.request(Prepare(text=text, **options)), Prepared)

    async def ping(self) -> float:
        """Round-trip time in seconds."""
        started = time.perf_counter()
        await self.request(Ping())
        return time.perf_counter() - started

    async def close(self, *, bye: bool = True) -> None:
        if bye and not self._writer.is_closing():
            with contextlib.suppress(ConnectionError):
                self.send(Bye())
                await self._writer.drain()
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._reader_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader_task

    # --- receiving ----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        lost: ConnectionError = ConnectionError("connection closed")
        try:
            while True:
                data = await self._reader.read(64 * 1024)
                self._connection.receive_data(data)
                while True:
                    try:
                        event = self._connection.next_message()
                    except RemoteProtocolError as exc:
                        if exc.fatal or not self._bad_event(exc):
                            raise  # nothing can be told which reply it was: give up
                        continue  # one request's unreadable reply; the stream goes on
                    if event is NEED_DATA:
                        break
                    if event is CLOSED:
                        return
                    assert isinstance(event, Event)
                    self._dispatch(event)
        except (ConnectionError, OSError):
            pass
        except RemoteProtocolError as exc:
            # The stream cannot be read on: every request and line waiting is told why.
            lost = ConnectionError(f"the server broke the protocol ({exc.code}): {exc.message}")
            lost.__cause__ = exc
            self._writer.close()
        finally:
            self._connection_lost(lost)

    def _bad_event(self, exc: RemoteProtocolError) -> bool:
        """An event that could not be read: the request it answers fails with the error.
        False if no waiting request can be told (its id unreadable or unknown): a reply
        lost that way would leave its caller waiting for ever."""
        future = self._pending.get(exc.request_id) if exc.request_id is not None else None
        if future is None or future.done():
            return False
        future.set_exception(exc)
        return True

    def _dispatch(self, event: Event) -> None:
        request_id = getattr(event, "id", None)
        future = self._pending.get(request_id) if request_id is not None else None
        if future is not None and not future.done():
            if isinstance(event, Error):
                future.set_exception(ServerError(event))
                return
            if isinstance(event, Queued):
                self._lines[event.line] = LineHandle(event)
            future.set_result(event)
            return
        handle = self._lines.get(getattr(event, "line", None)) if hasattr(event, "line") else None
        if handle is not None and isinstance(event, Started | Audio | Marks | Finished):
            handle._put(event)
            if isinstance(event, Finished):
                del self._lines[event.line]
            return
        self.unsolicited.put_nowait(event)

    def _connection_lost(self, why: ConnectionError) -> None:
        self.lost = why
        for future in self._pending.values():
            if not future.done():
                future.set_exception(why)
        for handle in self._lines.values():
            handle._connection_lost(why)
        self._lines.clear()


_EventT = TypeVar("_EventT", bound=Event)


def _expect(event: Event, expected: type[_EventT]) -> _EventT:
    if not isinstance(event, expected):
        raise TypeError(f"expected {expected.TYPE}, got {event.TYPE}")
    return event
