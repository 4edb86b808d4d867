"""Long fuzzing of the frame and message layer, bounded in time.

    .venv/bin/python benchmarks/fuzz.py --seconds 120

Runs the pure properties of ``tests/test_fuzz.py`` (the same test functions the suite runs,
with the strategies of ``tests/strategies.py``) on random inputs, round robin, until the time
is up: each input is a random buffer that Hypothesis turns into a test case
(``fuzz_one_input``). An input that raises is a crash; one that runs past ``--budget``
seconds is a hang. Prints the counts per property and exits 1 if anything crashed or hung.
Crashing inputs are written to ``--crash-dir`` (replay one with ``--replay FILE``); run from
the repository root and Hypothesis also keeps them in ``.hypothesis/``, where the next pytest
run of tests/test_fuzz.py replays them.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import test_fuzz  # noqa: E402  (needs tests/ on the path)

BUFFER_SIZES = (256, 1024, 4096, 16384)
"""Bytes of randomness per input: Hypothesis draws bigger examples from bigger buffers."""


class InputHang(Exception):
    """An input ran past its time budget."""


@dataclass
class Tally:
    inputs: int = 0
    valid: int = 0
    """Inputs that made a whole test case (the rest ran out of bytes or failed a filter)."""
    crashes: int = 0
    hangs: int = 0
    slowest: float = 0.0
    failures: dict[str, Path] = field(default_factory=dict)
    """One saved input per distinct failure (exception type and place)."""


def properties() -> dict[str, Callable[..., Any]]:
    return {test.__name__: test for test in test_fuzz.PURE_PROPERTIES}


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise InputHang


def run_one(test: Callable[..., Any], buffer: bytes, budget: float) -> tuple[bool, float]:
    """Run one input; (whether it made a test case, seconds). Raises what the test raised."""
    started = time.perf_counter()
    signal.setitimer(signal.ITIMER_REAL, budget)
    try:
        used = test.hypothesis.fuzz_one_input(buffer)  # type: ignore[attr-defined]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return used is not None, time.perf_counter() - started


def fuzz(seconds: float, budget: float, seed: int, crash_dir: Path) -> dict[str, Tally]:
    tests = properties()
    tallies = {name: Tally() for name in tests}
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    signal.signal(signal.SIGALRM, _on_alarm)
    try:
        while time.monotonic() < deadline:
            for name, test in tests.items():
                tally = tallies[name]
                buffer = rng.randbytes(rng.choice(BUFFER_SIZES))
                tally.inputs += 1
                try:
                    valid, took = run_one(test, buffer, budget)
                except InputHang:
                    tally.hangs += 1
                    _save(tally, crash_dir, name, "hang", buffer, f"over {budget} s\n")
                    continue
                except Exception as exc:
                    tally.crashes += 1
                    where = traceback.extract_tb(exc.__traceback__)[-1]
                    kind = f"{type(exc).__name__}@{Path(where.filename).name}:{where.lineno}"
                    _save(tally, crash_dir, name, kind, buffer, traceback.format_exc())
                    continue
                tally.valid += valid
                tally.slowest = max(tally.slowest, took)
    except KeyboardInterrupt:
        print("interrupted; figures so far:")
    return tallies


def _save(tally: Tally, crash_dir: Path, name: str, kind: str, buffer: bytes, why: str) -> None:
    if kind in tally.failures:
        return
    crash_dir.mkdir(parents=True, exist_ok=True)
    path = crash_dir / f"{name}-{len(tally.failures)}.bin"
    path.write_bytes(buffer)
    path.with_suffix(".txt").write_text(why, encoding="utf-8")
    tally.failures[kind] = path
    print(f"{name}: {kind} (input saved to {path})\n{why}", file=sys.stderr)


def replay(path: Path) -> int:
    """Run one saved input against the property named in its file name, with a traceback."""
    name = path.stem.rsplit("-", 1)[0]
    test = properties()[name]
    test.hypothesis.fuzz_one_input(path.read_bytes())  # type: ignore[attr-defined]
    print(f"{name}: {path} passes now")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120, help="how long to fuzz")
    parser.add_argument(
        "--budget", type=float, default=5.0, help="seconds one input may take before it is a hang"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the random inputs")
    parser.add_argument(
        "--crash-dir", type=Path, default=Path(tempfile.gettempdir()) / "dialogue-tts-fuzz"
    )
    parser.add_argument("--replay", type=Path, metavar="FILE", help="rerun one saved input")
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    started = time.monotonic()
    tallies = fuzz(args.seconds, args.budget, seed, args.crash_dir)
    elapsed = time.monotonic() - started
    print(f"fuzzed {elapsed:.0f} s, seed {seed}, budget {args.budget} s per input")
    print(f"{'property':<56} {'inputs':>7} {'cases':>7} {'crashes':>7} {'hangs':>5} {'slowest':>8}")
    for name, tally in tallies.items():
        print(
            f"{name:<56} {tally.inputs:>7} {tally.valid:>7} {tally.crashes:>7} "
            f"{tally.hangs:>5} {tally.slowest * 1000:>6.0f}ms"
        )
    inputs = sum(t.inputs for t in tallies.values())
    crashes = sum(t.crashes for t in tallies.values())
    hangs = sum(t.hangs for t in tallies.values())
    print(f"total: {inputs} inputs, {crashes} crashes, {hangs} hangs")
    return 1 if crashes or hangs else 0


if __name__ == "__main__":
    sys.exit(main())
