"""The engine side's cost, measured inside Godot 4.6: a web export in headless Chromium.

    .venv/bin/python benchmarks/godot4.py [--lines 24]

Needs what tests/test_godot4.py needs: the test extra (Playwright, websockets), Chromium and
Godot's web template in .cache/godot4-web (fetched by .ci/run).

Runs benchmarks/godot4 (with the Godot 4 addon) the way tests/test_godot4.py runs its test,
against one ``dialogue-tts serve --web``, over the first lines of tests/data's dialogue
corpus: for each line, speak() -> first audio frame pushed into the AudioStreamGenerator,
then skip() -> line_finished("skipped"). The same lines are then measured from a plain Python
WebSocket client on the same server (first audio message received; skip -> finished
received), so the difference is what the game's side adds: the addon's decoding, the
generator, and polling once per frame. Prints a Markdown section for benchmarks/RESULTS.md.

Not a test: nothing passes or fails; the figures are what one run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import msgpack
from websockets.sync.client import connect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the web runtime harness and the server helper

from godot_web import browser_page, served_game, start, wait_done  # noqa: E402
from helpers import server_process  # noqa: E402

CORPUS = REPO / "tests" / "data" / "dialogue-lines.jsonl"
PROJECT = REPO / "benchmarks" / "godot4"
ADDON = REPO / "integrations" / "godot" / "addons" / "dialogue_tts"
HANG_GUARD_SECONDS = 600


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def python_client(port: int, origin: str, lines: list[dict[str, str]]) -> list[tuple[float, float]]:
    """(first audio, skip -> finished) in ms per line, from a plain WebSocket client."""
    results = []
    with connect(f"ws://127.0.0.1:{port}/", origin=origin) as websocket:  # type: ignore[arg-type]
        websocket.send(msgpack.packb({"type": "hello", "protocol": 1, "client": "bench", "id": 0}))
        assert msgpack.unpackb(websocket.recv())["type"] == "welcome"
        for index, entry in enumerate(lines, start=1):
            say = {"type": "say", "id": index, "speaker": entry["speaker"], "text": entry["text"]}
            say["format"] = "f32le"
            spoken = time.perf_counter()
            websocket.send(msgpack.packb(say))
            while msgpack.unpackb(websocket.recv())["type"] != "audio":
                pass
            first_audio = time.perf_counter() - spoken
            skipped = time.perf_counter()
            websocket.send(msgpack.packb({"type": "skip", "speaker": entry["speaker"]}))
            while True:
                message = msgpack.unpackb(websocket.recv())
                if message["type"] == "finished":
                    break
            assert message["status"] == "skipped", message
            results.append((first_audio * 1000, (time.perf_counter() - skipped) * 1000))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=24, help="corpus lines to measure")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    corpus = [json.loads(line) for line in CORPUS.open(encoding="utf-8")][: args.lines]
    with tempfile.TemporaryDirectory() as folder:
        site = Path(folder) / "site"
        (Path(folder) / "lines.json").write_text(json.dumps(corpus), encoding="utf-8")
        pack = {
            "project.godot": PROJECT / "project.godot", "bench": PROJECT,
            "bench/lines.json": Path(folder) / "lines.json", "addons/dialogue_tts": ADDON,
        }  # fmt: skip
        with served_game(site, pack) as game:
            log = Path(folder) / "server.log"
            # No disk cache: each measure is of synthesis, whichever client says a line first.
            serve = ("--web", "--web-port", "0", "--web-origin", game.origin, "--no-cache")
            with server_process(*serve, log_path=log):
                match = re.search(r"preview page: http://[\d.]+:(\d+)/", log.read_text())
                assert match, log.read_text()
                port = int(match.group(1))
                python_client(port, game.origin, corpus[:3])  # warm-up, not counted
                with browser_page(game) as page:
                    start(page, game, [str(port)])
                    output = wait_done(page, game, HANG_GUARD_SECONDS)
                baseline = python_client(port, game.origin, corpus)
    rows = re.findall(
        r"^BENCH first_audio_ms=([\d.]+) skip_ms=([\d.]+) status=(\w+)$", output, re.MULTILINE
    )
    assert len(rows) == len(corpus) and all(row[2] == "skipped" for row in rows), output
    godot_first = [float(row[0]) for row in rows]
    godot_skip = [float(row[1]) for row in rows]
    client_first = [first for first, _skip in baseline]
    client_skip = [skip for _first, skip in baseline]
    print(
        f"## Inside Godot 4.6 (benchmarks/godot4.py)\n\n"
        f"Measured by `benchmarks/godot4.py` in one run on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs (load average "
        f"{load:.1f} at the start: figures are noisy); Godot "
        f"4.6 web export in headless Chromium (SwiftShader), the Godot 4 addon over WebSocket "
        f"to one `serve --web`. {len(corpus)} corpus lines, one at a time: speak(), then skip() "
        f"once its audio plays. The server-side column is a plain Python WebSocket client on "
        f"the same server in the same run, after the game; the difference is the game's side "
        f"(the addon's decoding, the generator, polling once per frame) and, on this 2-core "
        f"machine, Chromium and the engine taking CPU from the server's synthesis.\n\n"
        f"| measure ({len(corpus)} lines) | in Godot 4 | Python client, same server | ratio |\n"
        f"|---|---|---|---|\n"
        f"| speak() -> first frame pushed to the generator, median | "
        f"{statistics.median(godot_first):.1f} ms | first audio received "
        f"{statistics.median(client_first):.1f} ms | "
        f"{statistics.median(godot_first) / statistics.median(client_first):.2f}x |\n"
        f"| speak() -> first frame pushed to the generator, p95 | "
        f"{percentile(godot_first, 95):.1f} ms | {percentile(client_first, 95):.1f} ms | "
        f"{percentile(godot_first, 95) / percentile(client_first, 95):.2f}x |\n"
        f"| skip() -> line_finished(skipped), median | {statistics.median(godot_skip):.1f} ms | "
        f"{statistics.median(client_skip):.1f} ms | "
        f"{statistics.median(godot_skip) / statistics.median(client_skip):.2f}x |\n"
        f"| skip() -> line_finished(skipped), p95 | {percentile(godot_skip, 95):.1f} ms | "
        f"{percentile(client_skip, 95):.1f} ms | "
        f"{percentile(godot_skip, 95) / percentile(client_skip, 95):.2f}x |\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
