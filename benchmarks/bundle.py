"""The bundle a game ships (``dialogue-tts bundle``): build time, size, and start time against
``dialogue-tts serve`` from the venv.

    python benchmarks/bundle.py [--repeats 5] [--bundle DIR]

Start time is from launching the process to its "listening" line, with ``--port 0``, each in
a fresh process: the first start with an empty line cache (it measures the voice's rate
curve and keeps it there), then ``--repeats`` later starts that find it, the two servers taking
turns. The bundle runs with a clean environment (no venv on PATH), as on a player's machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from dialogue_tts.bundle import build_bundle, executable_name, folder_size


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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dialogue-tts-bench-") as temp:
        work = Path(temp)
        bundle = args.bundle
        if bundle is None:
            bundle = work / "dialogue-tts-server"
            started = time.perf_counter()
            build_bundle(bundle)
            print(f"build: {time.perf_counter() - started:.1f} s")
        size = folder_size(bundle)
        archive = shutil.make_archive(str(work / "bundle"), "zip", bundle.parent, bundle.name)
        files = sum(1 for path in bundle.rglob("*") if path.is_file())
        print(f"size: {size / 2**20:.0f} MiB in {files} files, "
              f"{os.path.getsize(archive) / 2**20:.0f} MiB zipped")  # fmt: skip
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
        for name, measured in times.items():
            print(f"{name}: first start {measured[0]:.2f} s, "
                  f"later starts median {median(measured[1:]):.2f} s "
                  f"({', '.join(f'{t:.2f}' for t in measured[1:])})")  # fmt: skip
        ratio = median(times["bundle"][1:]) / median(times["venv serve"][1:])
        print(
            f"bundle / venv, later starts: {ratio:.2f}x; first: "
            f"{times['bundle'][0] / times['venv serve'][0]:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
