"""A crowd and a render at once: latency under load, underruns, and how much of the machine
dialogue-tts uses, measured in one run against raw Piper on the same cores.

    .venv/bin/python benchmarks/load.py [--cores 1,2]

For each core count (the server and the baselines are pinned with ``taskset``):

- **Latency under load.** A probe connection says a new medium line, times its first audio,
  skips it, and waits a moment; 12 times per condition. Conditions: idle; 4, 8 and 16
  speakers talking, paced like a game (each keeps one line queued behind the one playing);
  a render running (4 ``synthesize`` requests in flight); idle again. Underruns of the
  talking speakers come from the server's ``status`` (pieces that reached the connection
  after its audio had played out).
- **Throughput** with as many speakers as cores, pace off (in interleaved rounds), against
  raw Piper in N processes with cores/N threads each (the practical ceiling), on the same
  texts.
- **Batch commands**: ``renpy-render`` and ``preview`` of the same lines, start to finish,
  against the same N raw processes started, loaded and run to the end; in interleaved
  rounds (``--rounds``), the median ratio counts.
- **Idle first audio** of long lines with the default settings against the best fixed
  single-line setting (``--workers 1 --threads CORES``), interleaved.

Writes its section of benchmarks/RESULTS.md. Not a test: the figures are what one run saw.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from results import write_section
from run import CORPUS, SAMPLE_RATE, first_audio_ours, median, ms, our_server, p95, ratio, rss_mib

from dialogue_tts.client import Client

HERE = Path(__file__).resolve().parent
OPTIONS = argparse.Namespace(probes=12, crowds=[4, 8, 16], rounds=3)
"""New lines timed per load condition, and the crowd sizes (set from the command line)."""
TEXTS = [line["text"] for line in CORPUS if line["kind"] in ("medium", "long")]
BATCH = [f"{name}, {text}" for name in ("Anna", "Bert", "Cora") for text in TEXTS]
"""The lines of the throughput and batch sections (about 4 minutes of speech), each one
different, so that no cache can help."""
MEDIUM = [line["text"] for line in CORPUS if line["kind"] == "medium"]
LONG = [line["text"] for line in CORPUS if line["kind"] == "long"]


def pinned(cores: int) -> list[str]:
    """``taskset`` to the first ``cores`` cores, where it exists."""
    return ["taskset", "-c", f"0-{cores - 1}"] if shutil.which("taskset") else []


@contextlib.contextmanager
def server(cores: int, *args: str) -> Iterator[tuple[int, int]]:
    """Our server pinned to ``cores``; yields (port, pid)."""
    with our_server(*args, prefix=tuple(pinned(cores))) as (port, process, _):
        yield port, process.pid


# --- latency under load --------------------------------------------------------------------


async def probe(port: int, label: str) -> list[float]:
    firsts = []
    async with await Client.connect(port=port, pace=False, client_name="probe") as client:
        for index in range(OPTIONS.probes):
            text = MEDIUM[index % len(MEDIUM)]
            firsts.append(await first_audio_ours(client, text, f"probe-{label}-{index}"))
            await asyncio.sleep(0.3)
    return firsts


async def talkers(port: int, speakers: int, stop: asyncio.Event) -> dict[str, float]:
    """``speakers`` characters talking, paced, each with one line queued behind the one
    playing; returns the connection's underruns and the audio it played."""
    async with await Client.connect(port=port, client_name="crowd") as client:

        async def talk(index: int) -> float:
            played = 0.0
            queue = [await client.say(f"c{index}", TEXTS[(index + k) % len(TEXTS)]) for k in (0, 1)]
            turn = 2
            while not stop.is_set():
                result = await queue.pop(0).wait()
                played += result.finished.samples / SAMPLE_RATE
                queue.append(await client.say(f"c{index}", TEXTS[(index + turn) % len(TEXTS)]))
                turn += 1
            await client.clear(f"c{index}")
            return played

        played = await asyncio.gather(*(talk(index) for index in range(speakers)))
        status = await client.status_report()
    underruns = status.underruns or {"count": 0, "seconds": 0.0}
    return {"count": underruns["count"], "seconds": underruns["seconds"], "played": sum(played)}


async def renderer(port: int, stop: asyncio.Event) -> None:
    """A batch render: 4 whole-line ``synthesize`` requests in flight (background work)."""
    async with await Client.connect(port=port, client_name="render") as client:

        async def render(index: int) -> None:
            turn = index
            while not stop.is_set():
                await client.synthesize(TEXTS[turn % len(TEXTS)])
                turn += 4

        await asyncio.gather(*(render(index) for index in range(4)))


async def latency_under_load(port: int, rows: list[str], values: dict[str, float]) -> None:
    results: dict[str, list[float]] = {"idle": await probe(port, "idle")}
    for speakers in OPTIONS.crowds:
        stop = asyncio.Event()
        crowd = asyncio.create_task(talkers(port, speakers, stop))
        await asyncio.sleep(3.0)  # everyone mid-line before the first probe
        results[f"{speakers} talking"] = await probe(port, f"crowd{speakers}")
        stop.set()
        gaps = await crowd
        label = f"{speakers} talking"
        values[f"underruns {speakers}"] = gaps["count"]
        rows.append(
            f"| underruns, {label} | {gaps['count']:.0f} gaps, {gaps['seconds']:.2f} s in "
            f"{gaps['played']:.0f} s of speech | | |"
        )
    stop = asyncio.Event()
    render = asyncio.create_task(renderer(port, stop))
    await asyncio.sleep(1.0)
    results["render running"] = await probe(port, "render")
    stop.set()
    await render
    results["idle again"] = await probe(port, "idle2")
    idle = median(results["idle"] + results["idle again"])
    for label, firsts in results.items():
        values[f"first {label}"] = median(firsts) / idle
        rows.append(
            f"| new line's first audio, {label} ({len(firsts)}), median (p95) | "
            f"{ms(median(firsts))} ({ms(p95(firsts))}) | idle {ms(idle)} | "
            f"{ratio(median(firsts), idle)} |"
        )


# --- throughput and batch commands -----------------------------------------------------------


def raw_processes(
    cores: int, texts: list[str], include_start: bool, ogg: bool = False
) -> tuple[float, int, float]:
    """N raw Piper processes, cores/N threads each, the texts dealt round robin; returns
    (seconds, samples, CPU seconds). Without ``include_start``, timed from a go signal after
    all loaded (and CPU from then); with ``ogg``, each line is also encoded as the OGG file
    renpy-render writes."""
    processes_count, threads = cores, 1  # N = cores: one thread each
    folder = Path(tempfile.mkdtemp())
    started, cpu_before = time.perf_counter(), children_cpu()
    processes = []
    for index in range(processes_count):
        share = folder / f"texts{index}.json"
        share.write_text(json.dumps(texts[index::processes_count]))
        processes.append(
            subprocess.Popen(
                [
                    *pinned(cores),
                    sys.executable,
                    str(HERE / "raw_piper_batch.py"),
                    str(threads),
                    str(share),
                    *(["--ogg"] if ogg else []),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    if not include_start:
        started = time.perf_counter()
    samples, cpu = 0, 0.0
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        output, _ = process.communicate()
        made, seconds = output.split()
        samples, cpu = samples + int(made), cpu + float(seconds)
    wall = time.perf_counter() - started
    shutil.rmtree(folder)
    return wall, samples, children_cpu() - cpu_before if include_start else cpu


def cpu_seconds(pid: int) -> float:
    """CPU time a process has used (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def throughput(port: int, pid: int, cores: int) -> tuple[float, float]:
    """Audio seconds per second with ``cores`` speakers at once, pace off, and per CPU
    second of the server (which a shared machine's other load does not change)."""
    async with await Client.connect(port=port, pace=False) as client:
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        lines = [await client.say(f"t{i % cores}", text) for i, text in enumerate(BATCH)]
        results = await asyncio.gather(*(line.wait() for line in lines))
        wall, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    audio = sum(r.finished.samples for r in results) / SAMPLE_RATE
    return audio / wall, audio / cpu


def batch_command(cores: int, command: str) -> tuple[float, float]:
    """Seconds and CPU seconds for ``renpy-render`` or ``preview`` of BATCH, start to finish,
    as a second run of a build step: the voice's calibration is in the disk cache, no line
    is."""
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        cache = ["--cache-dir", str(work / "cache")]
        header = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
        for name, texts in (("warm-up", ["Warm up."]), ("dialogue", BATCH)):
            rows = [f"l{i}\te\t{text}\tgame/script.rpy\t{i}\te \"[what]\""
                    for i, text in enumerate(texts)]  # fmt: skip
            (work / f"{name}.tab").write_text("\n".join([header, *rows]) + "\n")
        warm_up = ["renpy-render", str(work / "warm-up.tab"), "--quiet", "-o", str(work / "w")]
        subprocess.run([sys.executable, "-m", "dialogue_tts", *warm_up, *cache], check=True,
                       capture_output=True)  # fmt: skip
        if command == "renpy-render":
            args = ["renpy-render", str(work / "dialogue.tab"), "--quiet", *cache]
        else:
            script = "\n".join(f"{'AB'[i % 2]}: {text}" for i, text in enumerate(BATCH))
            (work / "scene.txt").write_text(script + "\n")
            args = ["preview", str(work / "scene.txt"), "--quiet", *cache,
                    "--output", str(work / "out")]  # fmt: skip
        started, cpu = time.perf_counter(), children_cpu()
        subprocess.run([*pinned(cores), sys.executable, "-m", "dialogue_tts", *args], check=True,
                       capture_output=True)  # fmt: skip
        return time.perf_counter() - started, children_cpu() - cpu


async def idle_first_audio(cores: int) -> tuple[float, float]:
    """Median first audio of long lines: default settings, and --workers 1 --threads CORES."""
    with server(cores) as (default, _), \
            server(cores, "--workers", "1", "--threads", str(cores)) as (fixed, _):  # fmt: skip
        ours: list[float] = []
        best: list[float] = []
        async with await Client.connect(port=default, pace=False) as a, \
                await Client.connect(port=fixed, pace=False) as b:  # fmt: skip
            for repeat in range(3):
                for index, text in enumerate(LONG):
                    ours.append(await first_audio_ours(a, text, f"d{repeat}-{index}"))
                    best.append(await first_audio_ours(b, text, f"f{repeat}-{index}"))
    return median(ours), median(best)


async def measure(cores: int, rows: list[str], values: dict[str, float]) -> None:
    rows.append(f"| **{cores} core(s)** | | | |")
    measured: list[tuple[float, float, float, float]] = []
    with server(cores) as (port, pid):
        await latency_under_load(port, rows, values)
        for _ in range(OPTIONS.rounds):  # interleaved with the baseline, as the batches
            rate, per_cpu = await throughput(port, pid, cores)
            seconds, samples, cpu = raw_processes(cores, BATCH, include_start=False)
            audio = samples / SAMPLE_RATE
            measured.append((rate, per_cpu, audio / seconds, audio / cpu))
        rss = rss_mib(pid)
    columns = zip(*measured, strict=True)
    rate, per_cpu, ceiling, ceiling_per_cpu = (median(list(column)) for column in columns)
    each = ", ".join(f"{ours / raw:.2f}" for ours, _, raw, _ in measured)
    values[f"throughput {cores}"] = median([ours / raw for ours, _, raw, _ in measured])
    values[f"throughput per cpu {cores}"] = median([ours / raw for _, ours, _, raw in measured])
    rows += [
        f"| throughput, {cores} speakers at once, pace off, median of {len(measured)} rounds "
        f"({each}) | {rate:.1f} audio s/s | raw Piper {cores} process(es) x 1 thread: "
        f"{ceiling:.1f} | {values[f'throughput {cores}']:.2f}x |",
        f"| the same, audio seconds per CPU second | {per_cpu:.1f} | {ceiling_per_cpu:.1f} | "
        f"{ratio(per_cpu, ceiling_per_cpu)} |",
        f"| server RSS after these sections | {rss:.0f} MiB | | |",
    ]
    # One run of a 15-second batch varies by about 10% from the next on a shared machine:
    # each command and its baselines run in interleaved rounds, and the median of the
    # rounds' ratios is what counts (each round's ratio is listed beside it).
    ratios: dict[str, list[tuple[float, float]]] = {}
    speeds: dict[str, list[tuple[float, float]]] = {}
    for _ in range(OPTIONS.rounds):
        raw_wall, _, raw_cpu = raw_processes(cores, BATCH, include_start=True)
        ogg_wall, _, ogg_cpu = raw_processes(cores, BATCH, include_start=True, ogg=True)
        for command in ("renpy-render", "preview"):
            wall, cpu = batch_command(cores, command)
            speeds.setdefault(command, []).append((len(BATCH) / wall, len(BATCH) / cpu))
            # renpy-render's output is OGG Vorbis (about 12 ms of encoding per second of
            # speech, a tenth of synthesis): its like-for-like ceiling is raw Piper writing
            # the same files; preview writes WAV, next to nothing: raw synthesis only.
            base_wall, base_cpu = (ogg_wall, ogg_cpu) if command == "renpy-render" else (
                raw_wall, raw_cpu)  # fmt: skip
            ratios.setdefault(command, []).append((base_wall / wall, base_cpu / cpu))
            speeds.setdefault(f"raw {command}", []).append(
                (len(BATCH) / base_wall, len(BATCH) / base_cpu)
            )
    for command, label in (("renpy-render", "writing the same OGG"),
                           ("preview", "synthesis only")):  # fmt: skip
        walls = [wall for wall, _ in ratios[command]]
        cpus = [cpu for _, cpu in ratios[command]]
        values[f"{command} {cores}"] = median(walls)
        values[f"{command} per cpu {cores}"] = median(cpus)
        ours = median([speed for speed, _ in speeds[command]])
        ours_cpu = median([speed for _, speed in speeds[command]])
        raw = median([speed for speed, _ in speeds[f"raw {command}"]])
        raw_cpu = median([speed for _, speed in speeds[f"raw {command}"]])
        rounds = ", ".join(f"{value:.2f}" for value in walls)
        rows += [
            f"| {command} of {len(BATCH)} lines, start to finish, median of {len(walls)} "
            f"rounds ({rounds}) | {ours:.2f} lines/s | raw Piper {cores} processes, {label}, "
            f"start to finish: {raw:.2f} | {median(walls):.2f}x |",
            f"| the same, lines per CPU second | {ours_cpu:.2f} | {raw_cpu:.2f} | "
            f"{median(cpus):.2f}x |",
        ]
    ours, best = await idle_first_audio(cores)
    values[f"idle first {cores}"] = ours / best
    rows.append(
        f"| idle first audio, long lines, default vs --workers 1 --threads {cores} | "
        f"{ms(ours)} | {ms(best)} | {ratio(ours, best)} |"
    )


def targets(values: dict[str, float], core_counts: list[int]) -> list[str]:
    def check(label: str, key: str, limit: float, most: bool) -> str:
        if key not in values:
            return f"- {label}: not measured"
        value = values[key]
        met = value <= limit if most else value >= limit
        return f"- {label}: {value:.2f} (target {'≤' if most else '≥'} {limit}): " + (
            "met" if met else "NOT met"
        )

    checks = [
        ("first audio, 4 talking / idle", "first 4 talking", 1.5, True),
        ("first audio, 8 talking / idle", "first 8 talking", 1.5, True),
        ("first audio, render running / idle", "first render running", 1.5, True),
        ("first audio, 16 talking / idle", "first 16 talking", 3.0, True),
        ("throughput / raw N-process", "throughput", 0.9, False),
        ("renpy-render / raw N-process writing OGG", "renpy-render", 0.9, False),
        ("preview / raw N-process", "preview", 0.9, False),
        ("idle first audio / best fixed setting", "idle first", 1.05, True),
    ]
    lines = []
    for cores in core_counts:
        for label, key, limit, most in checks:
            key = key if key.startswith("first ") else f"{key} {cores}"
            lines.append(check(f"{cores} core(s): {label}", key, limit, most))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", default=f"1,{os.cpu_count()}",
                        help="core counts to measure on, comma-separated")  # fmt: skip
    parser.add_argument("--probes", type=int, default=12, help="new lines timed per condition")
    parser.add_argument("--crowds", default="4,8,16", help="numbers of speakers talking")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the batch commands")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = parser.parse_args()
    OPTIONS.probes = args.probes
    OPTIONS.crowds = [int(n) for n in args.crowds.split(",")]
    OPTIONS.rounds = args.rounds
    core_counts = sorted({int(c) for c in args.cores.split(",")})
    rows = ["| measure | dialogue-tts | baseline | ratio |", "|---|---|---|---|"]
    started = time.perf_counter()
    per_cores: dict[int, dict[str, float]] = {}
    for cores in core_counts:
        values: dict[str, float] = {}
        asyncio.run(measure(cores, rows, values))
        per_cores[cores] = values
        print("\n".join(rows), flush=True)
    lines = [
        "## A crowd and a render at once (`benchmarks/load.py`)",
        "",
        f"One run ({(time.perf_counter() - started) / 60:.0f} min) on {time.strftime('%Y-%m-%d')},"
        f" {os.cpu_count()} cores on the machine, each core count pinned with taskset. "
        "Ratios are against a baseline measured in the same run.",
        "",
        *rows,
        "",
        "### Targets (issue 16)",
        "",
    ]
    for cores in core_counts:
        lines += targets({k: v for k, v in per_cores[cores].items()}, [cores])
    write_section(Path(args.out), "load.py", lines)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
