"""What the player hears in Ren'Py: from a say statement beginning to its voice playing.

    .venv/bin/python benchmarks/renpy_latency.py [--runs 3] [--write]

Needs Ren'Py 8 at /usr/games/renpy (Debian's 8.0.3: `apt-get install renpy`). Builds a game
with a linear scene of the corpus's short and medium lines (tests/data/dialogue-lines.jsonl,
long lines left out), said in turn by two voiced characters, and the test harness of
tests/data/renpy_harness, and plays it headless (offscreen video, dummy audio) at Ren'Py's
fastest auto-forward, three ways per run, interleaved so that machine noise hits all alike:

- **files**: the lines pre-rendered by `dialogue-tts renpy-render` from Ren'Py's own dialogue
  export, played by `config.auto_voice`, no server: the baseline a recorded voice-over gets;
- **live**: the binding without lookahead (`dialogue_tts.lookahead = 0`), a fresh server:
  each line's interaction waits for its first audio (`voice_start_wait`, 0.3 s at most);
- **live-no-wait**: the same with `voice_start_wait = 0`: the line shows at once and its
  voice follows;
- **lookahead**: the binding as shipped (2 lines ahead), a fresh server.

Each line's time runs from the say's "begin" character callback to
`renpy.music.get_playing("voice")` naming that line's audio, read 200 times a second by a
thread and on the main thread as each interaction starts and 20 times a second (whichever
sees it first), and to Ren'Py's audio thread handing it to the mixer
(`renpysound.playing_name`), which is nearer to what is heard, and to the line's first
frame being drawn (its text showing). A line whose voice never
played while it was shown is *dropped*. Servers run
with `--no-cache`, so nothing comes from an earlier run. The server's own first audio for
the same lines (a client's say to the first audio event) is measured once, apart.

Not a test: nothing passes or fails; the figures are what one run measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dialogue_tts.client import Client  # noqa: E402

RENPY = Path("/usr/games/renpy")
CORPUS = REPO / "tests" / "data" / "dialogue-lines.jsonl"
BINDING = REPO / "integrations" / "renpy" / "game" / "dialogue_tts"
HARNESS = REPO / "tests" / "data" / "renpy_harness"
PY311_FIX = REPO / "examples" / "renpy" / "game" / "00python311_fix.rpy"
CHARACTERS = (("e", "eileen", 1.0), ("l", "lucy", 1.2))
"""(variable, voice_tag, rate): the same settings live and pre-rendered (renpy-render's map
knows voice, rate and volume only, so no pitch)."""
WAYS = ("files", "live", "live-no-wait", "lookahead")
FASTEST_AFM = 0.1
"""The fastest auto-forward the preferences slider gives (its range starts at 0.1)."""


def corpus_lines() -> list[str]:
    rows = [json.loads(line) for line in CORPUS.open(encoding="utf-8")]
    return [row["text"] for row in rows if row["kind"] != "long"]


def _say_text(text: str) -> str:
    """A corpus line as a Ren'Py string literal: brackets and braces doubled (no
    interpolation or text tags), quotes escaped."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return text.replace("[", "[[").replace("{", "{{")


def build_game(folder: Path, lines: list[str]) -> Path:
    game = folder / "game"
    shutil.copytree(BINDING, game / "dialogue_tts",
                    ignore=shutil.ignore_patterns("*.rpyc", "__pycache__"))  # fmt: skip
    for source in (*[p for p in HARNESS.glob("*.rpy") if p.name == "harness.rpy"], PY311_FIX):
        shutil.copy(source, game / source.name)
    voices = ", ".join(f'"{tag}": {{"rate": {rate}}}' for _var, tag, rate in CHARACTERS)
    script = [
        *(f'define {var} = Character("{tag.title()}", voice_tag="{tag}")'
          for var, tag, _rate in CHARACTERS),
        f"define dialogue_tts.voices = {{{voices}}}",
        "",
        "label start:",
        *(f'    {CHARACTERS[i % 2][0]} "{_say_text(text)}"' for i, text in enumerate(lines)),
        "    return",
    ]  # fmt: skip
    (game / "scene.rpy").write_text("\n".join(script) + "\n", encoding="utf-8")
    return folder


def _renpy_env(folder: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "SDL_VIDEODRIVER": "offscreen", "SDL_AUDIODRIVER": "dummy",
            "HOME": str(folder), **extra}  # fmt: skip


def prerender(folder: Path) -> None:
    export = subprocess.run([str(RENPY), str(folder), "dialogue", "None"],
                            env=_renpy_env(folder), capture_output=True, text=True)  # fmt: skip
    if export.returncode:
        raise RuntimeError(export.stdout + export.stderr)
    mapping = folder / "voices.json"
    mapping.write_text(json.dumps({var: {"rate": rate} for var, _tag, rate in CHARACTERS}))
    subprocess.run([sys.executable, "-m", "dialogue_tts", "renpy-render",
                    str(folder / "dialogue.tab"), "--map", str(mapping), "--quiet"],
                   check=True)  # fmt: skip


@contextlib.contextmanager
def server() -> Iterator[int]:
    with tempfile.TemporaryDirectory() as scratch:
        log_path = Path(scratch) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "dialogue_tts", "serve", "--port", "0", "--no-cache"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            while not (found := re.search(rb"listening on [\d.]+:(\d+)", log_path.read_bytes())):
                if process.poll() is not None:
                    raise RuntimeError(log_path.read_text())
                time.sleep(0.05)
            yield int(found.group(1))
        finally:
            process.terminate()
            process.wait(10)


def play(folder: Path, way: str) -> dict:
    report_path = folder / f"report-{way}.json"
    env = {
        "DIALOGUE_TTS_HARNESS_REPORT": str(report_path),
        "DIALOGUE_TTS_AFM_TIME": str(FASTEST_AFM),
    }
    with contextlib.ExitStack() as stack:
        if way == "files":
            env |= {"DIALOGUE_TTS_AUTO_VOICE": "voice/{id}.ogg", "DIALOGUE_TTS_PORT": "1"}
        else:
            env["DIALOGUE_TTS_PORT"] = str(stack.enter_context(server()))
            env["DIALOGUE_TTS_LOOKAHEAD"] = "2" if way == "lookahead" else "0"
            if way == "live-no-wait":
                env["DIALOGUE_TTS_VOICE_START_WAIT"] = "0"
        result = subprocess.run([str(RENPY), str(folder)], env=_renpy_env(folder, **env),
                                capture_output=True, text=True, timeout=900)  # fmt: skip
    report = json.loads(report_path.read_text())
    if result.returncode or not report.get("finished"):
        raise RuntimeError(f"{way}: {report.get('error')}\n{result.stderr[-3000:]}")
    return report


def latencies(report: dict, key: str = "played") -> tuple[list[float], int]:
    """Milliseconds from each line's begin to its voice on the channel (``played``: what
    get_playing says) or started by the audio thread (``started``), and lines dropped."""
    times, dropped = [], 0
    for index, line in enumerate(report["lines"]):
        heard = [p["t"] for p in report[key] if p["line"] == index]
        if heard:
            times.append(1000 * (min(heard) - line["begin"]))
        else:
            dropped += 1
    return times, dropped


def first_frames(report: dict) -> list[float]:
    """Milliseconds from each line's begin to its first frame drawn (its text showing)."""
    return [1000 * (line["drawn"] - line["begin"]) for line in report["lines"]]


async def server_first_audio(lines: list[str]) -> list[float]:
    """Milliseconds from a say to its first audio, on a fresh server, the same lines."""
    with server() as port:
        async with await Client.connect(port=port, pace=False) as client:
            times = []
            for i, text in enumerate(lines):
                _var, tag, rate = CHARACTERS[i % 2]
                started = time.perf_counter()
                handle = await client.say(tag, text, rate=rate, markup="renpy")
                async for event in handle.events():
                    if event.TYPE == "audio":
                        times.append(1000 * (time.perf_counter() - started))
                        break
                await handle.wait()
            return times


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="print the RESULTS.md section")
    args = parser.parse_args()
    lines = corpus_lines()
    results: dict[str, dict] = {
        way: {"times": [], "started": [], "drawn": [], "dropped": []} for way in WAYS
    }
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_game(Path(scratch) / "scene", lines)
        prerender(folder)
        for run in range(args.runs):
            for way in WAYS:
                report = play(folder, way)
                times, dropped = latencies(report)
                results[way]["times"] += times
                results[way]["started"] += latencies(report, "started")[0]
                results[way]["drawn"] += first_frames(report)
                results[way]["dropped"].append(dropped)
                print(f"run {run + 1} {way}: median {statistics.median(times):.0f} ms, "
                      f"dropped {dropped} of {len(lines)}", flush=True)  # fmt: skip
    first_audio = asyncio.run(server_first_audio(lines))
    rows = []
    for way in WAYS:
        times, started = results[way]["times"], results[way]["started"]
        drawn = results[way]["drawn"]
        rows.append(f"| {way} | {statistics.median(times):.0f} | {_p95(times):.0f} | "
                    f"{statistics.median(started):.0f} | {_p95(started):.0f} | "
                    f"{statistics.median(drawn):.0f} | {_p95(drawn):.0f} | "
                    f"{' + '.join(map(str, results[way]['dropped']))} |")  # fmt: skip
    rows.append(f"| server first audio (client say → first audio event) | "
                f"{statistics.median(first_audio):.0f} | {_p95(first_audio):.0f} "
                "| | | | | |")  # fmt: skip
    table = "\n".join([
        f"{len(lines)} lines x {args.runs} runs per way; milliseconds from the say's begin",
        "",
        "| way | on the channel, median | p95 | started by the audio thread, median | p95 "
        "| first frame drawn, median | p95 | dropped per run |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
    ])  # fmt: skip
    print(table)
    if args.write:
        print(json.dumps({way: results[way] for way in WAYS} | {"first_audio": first_audio}))


if __name__ == "__main__":
    main()
