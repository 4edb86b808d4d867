"""Memory of the server against a raw Piper process, through a busy spell of lines and after it.

    .venv/bin/python benchmarks/memory.py [--lines 1200]

The server says every line (8 speakers at a time, pace off); raw Piper, in a process of its
own beside it (raw_piper_rss.py), synthesizes the same lines. Reports resident memory after
warm-up, right after the lines, once the server has been idle long enough to hand its
arenas' spare memory back (``workers.IDLE_RELEASE_SECONDS``), and each process's peak.
Issue 3's target: the server's memory after the lines at most half the raw process's.
Writes its section of benchmarks/RESULTS.md. Not a test: the figures are one run's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import platform
import subprocess
import sys
import time
from pathlib import Path

from results import write_section
from run import CORPUS, our_server, ratio, rss_mib

from dialogue_tts.client import Client
from dialogue_tts.workers import IDLE_RELEASE_SECONDS

HERE = Path(__file__).resolve().parent
TARGET = 0.5


async def say_all(port: int, texts: list[str]) -> None:
    async with await Client.connect(port=port, pace=False) as client:
        for start in range(0, len(texts), 8):
            batch = [
                await client.say(f"r{index}", text)
                for index, text in enumerate(texts[start : start + 8])
            ]
            await asyncio.gather(*(line.wait() for line in batch))


def measure(lines: int) -> list[tuple[str, float, float]]:
    """(measure, server MiB, raw Piper MiB) rows."""
    texts = [CORPUS[index % len(CORPUS)]["text"] for index in range(lines)]
    raw = subprocess.Popen(
        [sys.executable, str(HERE / "raw_piper_rss.py"), str(lines)],
        stdout=subprocess.PIPE,
        text=True,
    )
    with our_server() as (port, process, _):
        warm = rss_mib(process.pid)
        asyncio.run(say_all(port, texts))
        busy = rss_mib(process.pid)
        time.sleep(IDLE_RELEASE_SECONDS + 1.0)
        idle = rss_mib(process.pid)
        peak = rss_mib(process.pid, "VmHWM")
    output, _ = raw.communicate()
    raw_warm, raw_after, raw_peak = (float(value) for value in output.split())
    return [
        ("after warm-up", warm, raw_warm),
        (f"right after {lines} lines", busy, raw_after),
        (f"after {lines} lines, {IDLE_RELEASE_SECONDS + 1.0:.0f} s idle", idle, raw_after),
        ("peak (VmHWM)", peak, raw_peak),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1200, help="lines said")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    started = time.perf_counter()
    rows = measure(args.lines)
    after = rows[2]
    verdict = "met" if after[1] / after[2] <= TARGET else "NOT met"
    lines = [
        "## Memory through a busy spell and after it (`benchmarks/memory.py`)",
        "",
        f"One run ({time.perf_counter() - started:.0f} s) on {datetime.date.today()}: "
        f"{platform.machine()}, Python {platform.python_version()}, voice en_US-joe-medium, "
        f"{args.lines} corpus lines said 8 speakers at a time, pace off, no disk cache; raw "
        "Piper (`PiperVoice.synthesize` in a process of its own) synthesized the same lines "
        "beside it. Resident memory (VmRSS; peak: VmHWM).",
        "",
        "| measure | dialogue-tts | raw Piper | ratio |",
        "|---|---|---|---|",
        *(
            f"| {name} | {ours:.0f} MiB | {raw:.0f} MiB | {ratio(ours, raw)} |"
            for name, ours, raw in rows
        ),
        "",
        f"Issue 3's target, memory after the lines at most {TARGET}x the raw process's (once "
        f"idle): {after[1] / after[2]:.2f}x, {verdict}. The server hands back the memory its "
        f"calls took once it has been idle {IDLE_RELEASE_SECONDS:.0f} s (`workers.py`); "
        "right after the lines it still holds it.",
    ]
    write_section(Path(args.out), "memory.py", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
