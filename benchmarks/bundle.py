"""The bundle a game ships (``dialogue-tts bundle``): build time, size, and start time against
``dialogue-tts serve`` from the venv.

    python benchmarks/bundle.py [--repeats 5] [--bundle DIR] [--out benchmarks/RESULTS.md]

Start time is from launching the process to its "listening" line, with ``--port 0``, each in
a fresh process: the first start with an empty line cache (it measures the voice's rate
curve and keeps it there), then ``--repeats`` later starts that find it, the two servers taking
turns. The bundle runs with a clean environment (no venv on PATH), as on a player's machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from results import write_section

from dialogue_tts.bundle import build_bundle, executable_name, folder_size

REPO = Path(__file__).resolve().parent.parent


def seconds_to_listening(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if re.search(r"listening on", line):
                return time.perf_counter() - started
        raise RuntimeError(f"{command[0]} did not start")
    finally:
        process.terminate()
        process.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bundle", type=Path, help="a bundle already built (else build one)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dialogue-tts-bench-") as temp:
        work = Path(temp)
        bundle, build = args.bundle, "(given)"
        if bundle is None:
            bundle = work / "dialogue-tts-server"
            started = time.perf_counter()
            build_bundle(bundle)
            build = f"{time.perf_counter() - started:.1f} s"
        size = folder_size(bundle)
        archive = shutil.make_archive(str(work / "bundle"), "zip", bundle.parent, bundle.name)
        files = sum(1 for path in bundle.rglob("*") if path.is_file())
        servers = {
            "bundle": ([str(bundle / executable_name())],
                       {"HOME": str(work), "PATH": "/usr/bin:/bin"}),
            "venv serve": ([sys.executable, "-m", "dialogue_tts", "serve"], dict(os.environ)),
        }  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(1 + args.repeats):
            for name, (command, env) in servers.items():
                cache = work / f"cache-{name}"
                times[name].append(
                    seconds_to_listening(command, {**env, "DIALOGUE_TTS_CACHE": str(cache)})
                )
        zipped = os.path.getsize(archive)
    bundle_times, venv_times = times["bundle"], times["venv serve"]
    later = median(bundle_times[1:]), median(venv_times[1:])
    lines = [
        "## The bundle a game ships (issue 19)",
        "",
        f"Measured by `benchmarks/bundle.py --repeats {args.repeats}` on "
        f"{datetime.date.today()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        "Start: launch to the `listening on` line, `--port 0`, a fresh process each time (the "
        "bundle with only `HOME` and `PATH=/usr/bin:/bin`); first = empty line cache, later = "
        "the median of the starts after it.",
        "",
        "| measure | figure |",
        "|---|---|",
        f"| build (`dialogue-tts bundle OUT`) | {build} |",
        f"| folder size ({files} files) | {size / 2**20:.0f} MiB |",
        f"| zipped (what a player downloads) | {zipped / 2**20:.0f} MiB |",
        f"| start, first: bundle / venv | {bundle_times[0]:.2f} s / {venv_times[0]:.2f} s = "
        f"{bundle_times[0] / venv_times[0]:.2f}x |",
        f"| start, later: bundle / venv | {later[0]:.2f} s / {later[1]:.2f} s = "
        f"{later[0] / later[1]:.2f}x |",
    ]
    print("\n".join(lines))
    write_section(args.out, "bundle.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
