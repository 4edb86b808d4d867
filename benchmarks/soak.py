"""Soak test: many clients misbehaving for minutes against the real server and voice.

    .venv/bin/python benchmarks/soak.py --clients 8 --lines 1000 --seconds 300

Starts ``python -m dialogue_tts serve --port 0`` (the bundled voice), warms it up, then runs
N concurrent clients that each queue up to M dialogue lines (tests/data/dialogue-lines.jsonl)
for several speakers, with random skip, cancel, clear, interrupt, pause/resume, status and
ping, paced and unpaced connections, lines at repeated settings (cache hits) and at rates of
their own (synthesized), and abrupt disconnects (the transport aborted, often mid-line)
followed by a new connection. It stops at M lines per client or after S seconds.

Checked on the wire, for every connection:
- every line that got ``queued`` on a connection that stayed open gets exactly one
  ``finished`` (a connection ends with resume + clear, then waits for them);
- no ``started`` or ``audio`` for a line after its ``finished``; audio ``seq`` has no gaps;
  ``finished.samples`` is what was received;
- a ``skipped``, ``cancelled`` or ``cleared`` reply comes after the ``finished`` of the lines
  it names;
- no error other than unknown_line (cancelling a line that just ended) or queue_full, and no
  line ends with status ``error``;
- the server is alive at the end and serves a new client.

Measured: the server's RSS (VmRSS in /proc/PID/status) after warm-up, its peak during the
run (sampled each second, and the kernel's VmHWM), and at the end. Prints a summary and
writes benchmarks/SOAK.md; exits 1 if any check failed. This is not a test of speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import onnxruntime

from dialogue_tts.messages import (
    Audio,
    Cancel,
    Clear,
    Error,
    Event,
    Finished,
    Hello,
    LineId,
    Pause,
    Ping,
    Request,
    Resume,
    Say,
    Skip,
    Started,
    StatusRequest,
)
from dialogue_tts.protocol import CLOSED, NEED_DATA, Connection, Role

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from helpers import server_process  # noqa: E402  (needs tests/ on the path)

CORPUS = [json.loads(line) for line in (REPO / "tests/data/dialogue-lines.jsonl").open()]
TEXTS = [line["text"] for line in CORPUS]
SPEAKERS = ("guard", "merchant", "innkeeper", "bard")
BYTES_PER_SAMPLE = {"s16le": 2, "f32le": 4}
EXPECTED_ERRORS = frozenset({"unknown_line", "queue_full"})
REPLY_TIMEOUT = 60.0  # seconds: a reply later than this is a failure, not a slow machine
DRAIN_TIMEOUT = 120.0  # seconds for a connection's lines to finish once cleared
MAX_KEPT_VIOLATIONS = 40
# Weights of the actions a client takes between short random sleeps.
ACTIONS = {
    "say": 40, "skip": 14, "cancel": 8, "clear": 4, "pause": 5, "resume": 9,
    "status": 3, "ping": 3, "disconnect": 0.1,
}  # fmt: skip


@dataclass
class Stats:
    """What all clients did and saw."""

    requests: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    lines_queued: int = 0
    lines_checked: int = 0
    """Queued on connections that stayed open: each must have had exactly one finished."""
    audio_seconds: float = 0.0
    connections: int = 0
    disconnects: int = 0
    disconnects_mid_line: int = 0
    violations: list[str] = field(default_factory=list)
    violation_count: int = 0

    def violation(self, text: str) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_KEPT_VIOLATIONS:
            self.violations.append(text)
            print(f"VIOLATION: {text}", file=sys.stderr)


class SoakConnection:
    """One client connection on the raw protocol, checking every event it receives."""

    def __init__(
        self,
        name: str,
        stats: Stats,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.name = name
        self.stats = stats
        self._reader = reader
        self._writer = writer
        self._connection = Connection(Role.CLIENT)
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Event]] = {}
        self._formats_asked: dict[int, str] = {}
        self.formats: dict[LineId, str] = {}
        self.queued: set[LineId] = set()
        self.started: set[LineId] = set()
        self.finished: Counter[LineId] = Counter()
        self.samples: Counter[LineId] = Counter()
        self.next_seq: Counter[LineId] = Counter()
        self.all_finished = asyncio.Event()
        self.all_finished.set()
        self._read_task = asyncio.create_task(self._read_loop())

    @classmethod
    async def open(cls, name: str, stats: Stats, port: int, pace: bool) -> SoakConnection:
        connection = cls(name, stats, *await asyncio.open_connection("127.0.0.1", port))
        stats.connections += 1
        welcome = await connection.request(Hello(protocol=1, client=name, pace=pace))
        assert welcome.TYPE == "welcome", welcome
        return connection

    @property
    def playing(self) -> set[LineId]:
        """Lines started and not finished."""
        return {line for line in self.started if not self.finished[line]}

    def violation(self, text: str) -> None:
        self.stats.violation(f"{self.name}: {text}")

    async def request(self, message: Request) -> Event:
        """Send with a fresh id and wait for the reply (an Error event is a reply too)."""
        request_id = next(self._ids)
        message = dataclasses.replace(message, id=request_id)
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        if isinstance(message, Say):
            self._formats_asked[request_id] = message.format
        self.stats.requests[message.TYPE] += 1
        self._writer.write(self._connection.send(message))
        try:
            async with asyncio.timeout(REPLY_TIMEOUT):
                reply = await future
        except TimeoutError:
            self.violation(f"no reply to {message.TYPE} in {REPLY_TIMEOUT:.0f} s")
            raise
        finally:
            self._pending.pop(request_id, None)
            self._formats_asked.pop(request_id, None)
        if isinstance(reply, Error):
            self.stats.errors[reply.code] += 1
            if reply.code not in EXPECTED_ERRORS:
                self.violation(f"{message.TYPE} got error {reply.code}: {reply.message}")
        return reply

    async def say(self, message: Say) -> LineId | None:
        reply = await self.request(message)
        if reply.TYPE != "queued":
            return None
        return reply.line  # type: ignore[attr-defined, no-any-return]

    async def wait_all_finished(self) -> None:
        """Wait until every queued line has its finished; a violation if it takes too long."""
        try:
            async with asyncio.timeout(DRAIN_TIMEOUT):
                await self.all_finished.wait()
        except TimeoutError:
            missing = sorted(map(str, self.queued - set(self.finished)))
            self.violation(f"no finished for lines {missing[:10]} after {DRAIN_TIMEOUT:.0f} s")

    def abort(self) -> None:
        """Vanish: reset the connection without bye."""
        self._writer.transport.abort()
        self._read_task.cancel()
        for future in self._pending.values():
            future.cancel()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
        self._read_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._read_task

    # --- receiving ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await self._reader.read(65536)
                self._connection.receive_data(data)
                while (event := self._connection.next_message()) is not NEED_DATA:
                    if event is CLOSED:
                        return
                    assert isinstance(event, Event)
                    self._receive(event)

    def _receive(self, event: Event) -> None:
        if isinstance(event, Started | Audio | Finished):
            self._line_event(event)
            return
        request_id = getattr(event, "id", None)
        future = self._pending.get(request_id) if isinstance(request_id, int) else None
        if future is None or future.done():
            self.violation(f"unexpected {event}")
            return
        self._check_reply(event)
        future.set_result(event)

    def _check_reply(self, event: Event) -> None:
        """Replies that name lines come after those lines' finished (PROTOCOL.md)."""
        named: list[LineId] = []
        if event.TYPE == "queued":
            # Its events may be read before the say's caller resumes: note the format now.
            self.formats[event.line] = self._formats_asked[event.id]  # type: ignore[attr-defined]
            self.queued.add(event.line)  # type: ignore[attr-defined]
            self.all_finished.clear()
            self.stats.lines_queued += 1
        elif event.TYPE in ("skipped", "cancelled"):
            line = event.line  # type: ignore[attr-defined]
            named = [] if line is None else [line]
        elif event.TYPE == "cleared":
            named = list(event.lines)  # type: ignore[attr-defined]
        for line in named:
            if not self.finished[line]:
                self.violation(f"{event.TYPE} reply for line {line!r} before its finished")

    def _line_event(self, event: Any) -> None:
        line = event.line
        if line not in self.queued:
            self.violation(f"{event.TYPE} for line {line!r}, which was never queued")
            return
        if self.finished[line]:
            self.violation(f"{event.TYPE} for line {line!r} after its finished")
        if isinstance(event, Started):
            if line in self.started:
                self.violation(f"second started for line {line!r}")
            self.started.add(line)
        elif isinstance(event, Audio):
            if line not in self.started:
                self.violation(f"audio before started for line {line!r}")
            if event.seq != self.next_seq[line]:
                self.violation(
                    f"line {line!r}: audio seq {event.seq}, expected {self.next_seq[line]}"
                )
            self.next_seq[line] = event.seq + 1
            self.samples[line] += len(event.data) // BYTES_PER_SAMPLE[self.formats[line]]
        elif isinstance(event, Finished):
            self.finished[line] += 1
            self.stats.statuses[event.status] += 1
            if event.status == "error":
                self.violation(f"line {line!r} ended with an error: {event.message}")
            if event.samples != self.samples[line]:
                received = self.samples[line]
                self.violation(f"line {line!r}: finished.samples {event.samples}, got {received}")
            self.stats.audio_seconds += self.samples[line] / 22050
            if all(self.finished[queued] for queued in self.queued):
                self.all_finished.set()


# --- the clients ------------------------------------------------------------------------------


async def run_client(
    index: int, port: int, lines: int, deadline: float, stats: Stats, rng: random.Random
) -> None:
    """One game: up to ``lines`` lines over one or more connections, until ``deadline``."""
    said = 0
    generation = 0
    while said < lines and time.monotonic() < deadline:
        generation += 1
        name = f"client{index}.{generation}"
        connection = await SoakConnection.open(name, stats, port, pace=rng.random() < 0.7)
        vanished = False
        while said < lines and time.monotonic() < deadline:
            action = rng.choices(list(ACTIONS), weights=list(ACTIONS.values()))[0]
            if action == "disconnect":
                if connection.playing:
                    stats.disconnects_mid_line += 1
                stats.disconnects += 1
                connection.abort()
                vanished = True
                break
            said += await act(connection, action, rng)
            await asyncio.sleep(rng.choice([0, 0.01, 0.05, 0.1, 0.2, 0.5]))
        if vanished:
            continue
        # The end of a scene: everything still queued or playing ends now, and must finish.
        await connection.request(Resume())
        await connection.request(Clear())
        await connection.wait_all_finished()
        stats.lines_checked += len(connection.queued)
        for line in connection.queued:
            if connection.finished[line] != 1:
                connection.violation(f"line {line!r} got {connection.finished[line]} finished")
        await connection.close()


async def act(connection: SoakConnection, action: str, rng: random.Random) -> int:
    """Do one random request; returns 1 if a line was queued."""
    speaker = rng.choice(SPEAKERS)
    if action == "say":
        audio_format = rng.choice(["s16le", "s16le", "f32le"])
        line = await connection.say(
            Say(
                speaker=speaker,
                text=rng.choice(TEXTS),
                interrupt=rng.random() < 0.05,
                format=audio_format,  # type: ignore[arg-type]
                # Repeated settings hit the server's caches; a rate of its own is synthesized.
                rate=rng.choice([1.0, 0.8, 1.3, round(rng.uniform(0.7, 1.6), 3)]),
            )
        )
        return 0 if line is None else 1
    if action == "skip":
        await connection.request(Skip(speaker=speaker))
    elif action == "cancel" and connection.queued:
        await connection.request(Cancel(line=rng.choice(sorted(connection.queued, key=str))))
    elif action == "clear":
        await connection.request(Clear(speaker=rng.choice([speaker, None])))
    elif action == "pause":
        await connection.request(Pause(speaker=rng.choice([speaker, speaker, None])))
    elif action == "resume":
        await connection.request(Resume(speaker=rng.choice([speaker, None])))
    elif action == "status":
        await connection.request(StatusRequest())
    elif action == "ping":
        await connection.request(Ping())
    return 0


# --- the server -------------------------------------------------------------------------------


@contextlib.contextmanager
def server(log_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """``dialogue-tts serve --port 0`` with its log in ``log_path``; yields (port, process).

    Its rendered-line cache goes beside the log: the run starts cold and leaves the user's
    cache folder alone."""
    cache = log_path.parent / "cache"
    try:
        with server_process(env={"DIALOGUE_TTS_CACHE": str(cache)}, log_path=log_path) as found:
            yield found
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            figures[key] = int(value.split()[0]) * 1024
    return figures


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    """VmRSS once a second until ``stop``."""
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            samples.append(memory(pid)["VmRSS"])
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                await stop.wait()


async def scene(port: int, name: str, texts: list[str]) -> bool:
    """One well-behaved connection saying ``texts`` unpaced; True if every line was done."""
    stats = Stats()
    connection = await SoakConnection.open(name, stats, port, pace=False)
    for text in texts:
        await connection.say(Say(speaker="warmup", text=text))
    await connection.wait_all_finished()
    await connection.close()
    return stats.statuses["done"] == len(texts) and not stats.violation_count


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Result:
    args: argparse.Namespace
    stats: Stats
    seconds: float
    rss_start: int
    rss_peak: int
    rss_end: int
    rss_each_minute: list[int]
    hwm: int
    cpu: float
    alive: bool
    served_after: bool
    load: tuple[float, float]
    """The machine's 1-minute load average at the start and at the end (shared machines)."""
    log_warnings: list[str]

    @property
    def passed(self) -> bool:
        return self.alive and self.served_after and not self.stats.violation_count


async def soak(args: argparse.Namespace, port: int, process: subprocess.Popen[bytes]) -> Result:
    rng = random.Random(args.seed)
    warm = await scene(port, "warmup", [line["text"] for line in CORPUS[::3]])
    if not warm:
        raise RuntimeError("the warm-up lines did not play")
    rss_start = memory(process.pid)["VmRSS"]
    load_start = os.getloadavg()[0]
    cpu_start = cpu_seconds(process.pid)
    stats = Stats()
    samples: list[int] = []
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(process.pid, samples, stop))
    started = time.monotonic()
    deadline = started + args.seconds
    clients = [
        run_client(i, port, args.lines, deadline, stats, random.Random(rng.random()))
        for i in range(args.clients)
    ]
    outcomes = await asyncio.gather(*clients, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            stats.violation(f"a client failed: {outcome!r}")
    seconds = time.monotonic() - started
    cpu = (cpu_seconds(process.pid) - cpu_start) / seconds
    await asyncio.sleep(2)  # let the server drop the last connections
    stop.set()
    await sampler
    alive = process.poll() is None
    served_after = alive and await scene(port, "after", ["Still standing, after all that."])
    figures = memory(process.pid) if alive else {"VmRSS": 0, "VmHWM": 0}
    return Result(
        args=args, stats=stats, seconds=seconds, rss_start=rss_start,
        rss_peak=max(samples, default=0), rss_end=figures["VmRSS"], hwm=figures["VmHWM"],
        rss_each_minute=samples[59::60],
        cpu=cpu, alive=alive, served_after=served_after,
        load=(load_start, os.getloadavg()[0]), log_warnings=[],
    )  # fmt: skip


def mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, {platform.system()} {platform.release()}"
    )


def report(result: Result) -> str:
    stats, args = result.stats, result.args
    statuses = ", ".join(f"{name} {count}" for name, count in sorted(stats.statuses.items()))
    requests = ", ".join(f"{name} {count}" for name, count in sorted(stats.requests.items()))
    errors = ", ".join(f"{name} {count}" for name, count in sorted(stats.errors.items()))
    disconnects = f"{stats.disconnects} ({stats.disconnects_mid_line})"
    alive = f"{result.alive} / {result.served_after}"
    load = f"{result.load[0]:.1f} / {result.load[1]:.1f}"
    rows = [
        ("run", f"{result.seconds:.0f} s, {args.clients} clients"),
        ("connections opened", str(stats.connections)),
        ("abrupt disconnects (of which mid-line)", disconnects),
        ("requests", requests),
        ("lines queued", str(stats.lines_queued)),
        ("lines checked for one finished (connection stayed open)", str(stats.lines_checked)),
        ("finished, by status", statuses),
        ("audio received", f"{stats.audio_seconds:.0f} s"),
        ("error replies (expected: unknown_line, queue_full)", errors or "none"),
        ("server CPU during the run", f"{result.cpu * 100:.0f}% of one core"),
        ("machine load average (1 min) at start / end", load),
        ("server RSS after warm-up", mib(result.rss_start)),
        ("server RSS peak during the run (1 s samples)", mib(result.rss_peak)),
        ("server RSS at the end (clients gone)", mib(result.rss_end)),
        ("server RSS after each minute", ", ".join(mib(rss) for rss in result.rss_each_minute)),
        ("server VmHWM (peak since start, load included)", mib(result.hwm)),
        ("server alive at the end / served a new client", alive),
        ("server log lines at WARNING or above", str(len(result.log_warnings))),
        ("violations", str(stats.violation_count)),
    ]  # fmt: skip
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [
        "# Soak results",
        "",
        f"Measured by `benchmarks/soak.py` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
        f"{machine()}. Command: `.venv/bin/python benchmarks/soak.py --clients {args.clients} "
        f"--lines {args.lines} --seconds {args.seconds:g} --seed {args.seed}`. "
        f"Voice en_US-joe-medium. Result: **{verdict}**.",
        "",
        "Each client queues lines for 4 speakers and, between random 0-0.5 s sleeps, skips, "
        "cancels, clears, interrupts, pauses and resumes; 30% of connections are unpaced; a "
        "quarter of the lines have a speaking rate of their own, so they are synthesized, the "
        "rest repeat settings and come from the server's caches (which start empty); a "
        "client sometimes aborts its connection (often mid-line) and opens a new one. Every "
        "connection that stays open ends with resume + clear and must then hold exactly one "
        "finished per queued line. See the docstring of benchmarks/soak.py for every check.",
        "",
        "| figure | value |",
        "|---|---|",
        table,
    ]
    if stats.violations:
        lines += ["", "## Violations", "", *(f"- {text}" for text in stats.violations)]
    if result.log_warnings:
        lines += ["", "## Server log (warnings and above)", "", "```"]
        lines += [*result.log_warnings[:30], "```"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--lines", type=int, default=200, help="lines per client, at most")
    parser.add_argument("--seconds", type=float, default=300, help="stop after this long")
    parser.add_argument("--seed", type=int, default=5757)
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/SOAK.md", help="where to write the figures"
    )
    parser.add_argument("--no-write", action="store_true", help="only print the summary")
    args = parser.parse_args()
    log_path = Path(tempfile.mkdtemp(prefix="dialogue-tts-soak-")) / "server.log"
    with server(log_path) as (port, process):
        print(f"server pid {process.pid} on port {port}; log in {log_path}")
        result = asyncio.run(soak(args, port, process))
    result.log_warnings = [
        line
        for line in log_path.read_text(errors="replace").splitlines()
        if re.search(r" (WARNING|ERROR|CRITICAL) |Traceback", line)
    ]
    text = report(result)
    print(text)
    if not args.no_write:
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}")
    return 0 if result.passed else 1


if __name__ == "__main__":
    sys.exit(main())
