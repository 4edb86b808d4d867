"""What the player hears of a linear scene inside Godot 4.6, with lookahead and without.

    .venv/bin/python benchmarks/godot4_lookahead.py [--lines 25] [--write]

Needs what tests/test_godot4.py needs (see benchmarks/godot4.py). Runs benchmarks/godot4's
lookahead.gd with the Godot 4 addon against one ``dialogue-tts serve --web --no-cache``:
the corpus lines (shared/corpus, copied in tests/data) are a linear scene, each spoken when
the one before has finished: first as pre-rendered voice files (``dialogue-tts preview``'s
per-line WAV files, loaded before each line and played by an AudioStreamPlayer: the baseline
a recorded voice-over gets, timed from ``play()`` to its playback position advancing), then
live, then with lookahead (the next 2 lines handed to
``lookahead()`` as each begins; the addon holds their audio, and speak() of a held line pushes
it into the player in that call). Measured per line: from ``speak()`` to the playback position
of the speaker's player passing the line's first frame (the generator's frames consumed by
Godot's mixer: issue 14's "playback position advancing") and to the addon's own played-frames
counter passing it (that, less the output latency still ahead: audible). Beside them,
the server's first audio for the same lines from a plain Python WebSocket client: synthesized
live (before the game, on lines nobody prepared, and again while the game plays its voice
files, with the browser sharing the cores), and prepared (after it). Prints the
Markdown section; ``--write`` also puts it in benchmarks/RESULTS.md.

Not a test: nothing passes or fails; the figures are what one run measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
from godot4 import ADDON, CORPUS, HANG_GUARD_SECONDS, PROJECT, REPO, percentile, python_client
from godot_web import browser_page, served_game, start, wait_done
from helpers import server_process
from results import write_section
from websockets.sync.client import connect

RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "godot4-lookahead"
TARGET_MS = 50.0  # issue 14: speak() of a prepared line -> audible playback, median


def prepared_first_audio(port: int, origin: str, lines: list[dict[str, str]]) -> list[float]:
    """First audio in ms of each line said once the server has prepared it (prepare, wait
    for ``prepared``, then say; skip)."""
    results = []
    with connect(f"ws://127.0.0.1:{port}/", origin=origin) as websocket:  # type: ignore[arg-type]
        websocket.send(msgpack.packb({"type": "hello", "protocol": 1, "client": "bench", "id": 0}))
        assert msgpack.unpackb(websocket.recv())["type"] == "welcome"
        for index, entry in enumerate(lines, start=1):
            line = {"speaker": entry["speaker"], "text": entry["text"]}
            websocket.send(msgpack.packb({"type": "prepare", "id": -index, **line}))
            while msgpack.unpackb(websocket.recv())["type"] != "prepared":
                pass
            spoken = time.perf_counter()
            websocket.send(msgpack.packb({"type": "say", "id": index, "format": "f32le", **line}))
            while msgpack.unpackb(websocket.recv())["type"] != "audio":
                pass
            results.append((time.perf_counter() - spoken) * 1000)
            websocket.send(msgpack.packb({"type": "skip", "speaker": entry["speaker"]}))
            while msgpack.unpackb(websocket.recv())["type"] != "finished":
                pass
    return results


def prerender(corpus: list[dict[str, str]], folder: Path) -> list[Path]:
    """Each line's voice file, as a writer pre-renders a scene: ``dialogue-tts preview``."""
    script = folder / "scene.json"
    script.write_text(json.dumps(corpus), encoding="utf-8")
    output = folder / "preview"
    command = [sys.executable, "-m", "dialogue_tts", "preview", str(script), "-o", str(output),
               "--format", "wav", "--no-cache", "--quiet"]  # fmt: skip
    subprocess.run(command, check=True)
    files = sorted((output / "lines").glob("*.wav"))
    assert len(files) == len(corpus), files
    return files


def run_game(
    corpus: list[dict[str, str]],
) -> tuple[str, list[float], list[float], list[float]]:
    """The game's console, and the server's first audio (ms per line): live before the game
    starts, live while it plays its voice files, and prepared."""
    with tempfile.TemporaryDirectory() as folder:
        lines, project = Path(folder) / "lines.json", Path(folder) / "project.godot"
        voices = prerender(corpus, Path(folder))
        scene = [entry | {"voice": f"res://bench/voice/{path.name}"}
                 for entry, path in zip(corpus, voices, strict=True)]  # fmt: skip
        lines.write_text(json.dumps(scene), encoding="utf-8")
        settings = (PROJECT / "project.godot").read_text(encoding="utf-8")
        project.write_text(settings.replace("bench.tscn", "lookahead.tscn"), encoding="utf-8")
        pack = {
            "project.godot": project, "bench": PROJECT, "bench/lines.json": lines,
            "bench/voice": voices[0].parent, "addons/dialogue_tts": ADDON,
        }  # fmt: skip
        with served_game(Path(folder) / "site", pack) as game:
            log = Path(folder) / "server.log"
            # No disk cache: a line is synthesized, unless it was prepared (in memory).
            serve = ("--web", "--web-port", "0", "--web-origin", game.origin, "--no-cache")
            with server_process(*serve, log_path=log):
                match = re.search(r"preview page: http://[\d.]+:(\d+)/", log.read_text())
                assert match, log.read_text()
                port = int(match.group(1))
                warm_up = [{"speaker": "warm", "text": "A line to warm the voice up."}]
                python_client(port, game.origin, warm_up)
                live = [first for first, _skip in python_client(port, game.origin, corpus)]
                with browser_page(game) as page, ThreadPoolExecutor(1) as pool:
                    start(page, game, [str(port)])
                    _wait_for_files_phase(page, game)
                    # The same lines again, while the game plays its voice files (it asks
                    # the server for nothing then): the server's first audio with the browser
                    # sharing the cores, as it does while the game's live lines are said.
                    beside = pool.submit(python_client, port, game.origin, corpus)
                    output = wait_done(page, game, HANG_GUARD_SECONDS)
                    busy = [first for first, _skip in beside.result()]
                prepared = prepared_first_audio(port, game.origin, corpus)
    return output, live, busy, prepared


def _wait_for_files_phase(page: object, game: object) -> None:
    """Until the game has measured its first voice file (it has booted, and plays files)."""
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not any(line.startswith("BENCH mode=files") for line in game.console):  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "\n".join(game.console)  # type: ignore[attr-defined]
        page.wait_for_timeout(250)  # type: ignore[attr-defined]


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ms | {percentile(values, 95):.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=25, help="corpus lines of the scene")
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    corpus = [json.loads(line) for line in CORPUS.open(encoding="utf-8")][: args.lines]
    output, live, busy, prepared = run_game(corpus)
    rows = re.findall(
        r"^BENCH mode=(\w+) prepared=(\w+) held=(\w+) mixed_ms=([\d.-]+) heard_ms=([\d.-]+) "
        r"frames=(\d+) audio_frames=(-?\d+) audio_ms=([\d.-]+)$",
        output, re.MULTILINE,
    )  # fmt: skip
    assert len(rows) == 3 * len(corpus), output
    latency = re.search(r"^BENCH_INFO output_latency_ms=([\d.]+)$", output, re.MULTILINE)
    frame_ms = re.search(r"^BENCH_INFO frame_ms=([\d.]+)$", output, re.MULTILINE)
    modes = ("files", "live", "lookahead")
    by_mode: dict[str, list[tuple[bool, bool, float, float]]] = {mode: [] for mode in modes}
    frames: dict[str, list[int]] = {mode: [] for mode in modes}
    audio_frames: dict[str, list[int]] = {mode: [] for mode in modes}
    arrived: dict[str, list[float]] = {mode: [] for mode in modes}  # first audio in the addon
    for mode, was_prepared, held, mixed, heard, mixed_frames, received_frames, audio in rows:
        by_mode[mode].append((was_prepared == "true", held == "true", float(mixed), float(heard)))
        frames[mode].append(int(mixed_frames))
        audio_frames[mode].append(int(received_frames))
        arrived[mode].append(float(audio))
    ahead = by_mode["lookahead"]
    ready = [row for row in ahead if row[0]]
    held_rows = [row for row in ahead if row[1]]
    table = [
        f"| way ({len(corpus)} lines) | speak() -> playback position advancing, median | p95 "
        f"| speak() -> played (less the output latency), median | p95 |",
        "|---|---|---|---|---|",
        f"| voice files (baseline; from play()) | {stats([r[2] for r in by_mode['files']])} | | |",
        f"| live (no lookahead) | {stats([r[2] for r in by_mode['live']])} "
        f"| {stats([r[3] for r in by_mode['live']])} |",
        f"| lookahead, all lines | {stats([r[2] for r in ahead])} "
        f"| {stats([r[3] for r in ahead])} |",
    ]
    for label, subset in (
        ("prepared by their speak()", ready),
        ("started from held audio", held_rows),
    ):
        if subset:
            table.append(
                f"| lookahead, the {len(subset)} lines {label} "
                f"| {stats([r[2] for r in subset])} | {stats([r[3] for r in subset])} |"
            )
    median_ready = statistics.median([r[2] for r in ready]) if ready else float("nan")
    median_files = statistics.median([r[2] for r in by_mode["files"]])
    median_live = statistics.median([r[2] for r in by_mode["live"]])
    live_target = statistics.median(busy) + 100.0 + median_files
    quiet_target = statistics.median(live) + 100.0 + median_files
    in_game_first_audio = statistics.median(arrived["live"])
    after_arrival = statistics.median(
        [row[2] - audio for row, audio in zip(by_mode["live"], arrived["live"], strict=True)]
    )
    median_heard = statistics.median([r[3] for r in ready]) if ready else float("nan")
    lines = [
        "## Inside Godot 4.6, with lookahead (benchmarks/godot4_lookahead.py)",
        "",
        f"Measured by `benchmarks/godot4_lookahead.py` in one run on {time.strftime('%Y-%m-%d')}: "
        f"{platform.machine()}, {os.cpu_count()} cores (load average {load:.1f} at the start); "
        f"Godot 4.6 web export in headless "
        f"Chromium (SwiftShader), the Godot 4 addon over WebSocket to one `serve --web "
        f"--no-cache`. The {len(corpus)} corpus lines as a linear scene, each spoken when the "
        f"one before has finished; first as pre-rendered voice files (`dialogue-tts preview`'s "
        f"per-line WAV files, loaded before each line, played by an AudioStreamPlayer: timed "
        f"from `play()`), then live, then with lookahead (the next 2 lines handed to "
        f"`lookahead()` as each begins, the first ones prepared before the scene starts; the "
        f"addon holds their audio, and `speak()` of a held line pushes it into the player in "
        f"that call). Timed from `speak()` to the playback position of the speaker's player "
        f"passing the line's first frame (the generator's frames consumed by Godot's mixer: "
        f"frames pushed minus those it still holds), and to the addon's played-frames counter "
        f"passing it (that, less the output latency still ahead: "
        f"{latency.group(1) if latency else '?'} ms here, what the browser reports); the game "
        f"checks once per frame, so both include waiting for frames.",
        "",
        *table,
        "",
        f"The server's own first audio for the same lines (a plain Python WebSocket client, "
        f"same server, same run): synthesized live before the game started, median "
        f"{stats(live).replace(' | ', ', p95 ')}; synthesized live while the game ran (during "
        f"its voice files, when it asks the server for nothing: the browser shares the cores, "
        f"as while the game's live lines are said), median "
        f"{stats(busy).replace(' | ', ', p95 ')}; prepared, median "
        f"{stats(prepared).replace(' | ', ', p95 ')}. In the game, the live lines' first audio "
        f"was in the addon {stats(arrived['live']).replace(' | ', ', p95 ')} after speak() "
        f"(seen once per frame).",
        "",
        f"Frames: the game ran at {frame_ms.group(1) if frame_ms else '?'} ms a frame on "
        f"average; speak() -> audio mixed took a median of "
        f"{statistics.median(frames['lookahead']):g} frames with lookahead "
        f"({statistics.median(frames['live']):g} live), of which "
        f"{statistics.median(audio_frames['lookahead']):g} "
        f"({statistics.median(audio_frames['live']):g} live) until the frame in which the addon "
        f"had the line's first audio and pushed it into the generator (0: held, pushed in "
        f"`speak()` itself; else received from the server, whose socket it reads once per "
        f"frame), and the rest until Godot's mixer had consumed it."
        + (
            f" {len(ahead) - len(ready)} lines were spoken before their prepare had finished "
            f"(the line before was short), and were synthesized live."
            if len(ready) < len(ahead)
            else ""
        ),
        "",
        f"Issue 14's target, speak() of a prepared line -> the player's playback position "
        f"advancing <= {TARGET_MS:.0f} ms median: {median_ready:.1f} ms here "
        f"({'met' if median_ready <= TARGET_MS else 'not met'}). Played, counting the output "
        f"latency the browser reports: {median_heard:.1f} ms median "
        f"({'within' if median_heard <= TARGET_MS else 'over'} {TARGET_MS:.0f} ms).",
        "",
        f"Issue 14's target without lookahead, at most the server's first audio + 100 ms over "
        f"the voice files (median), with the first audio measured while the game ran: "
        f"{statistics.median(busy):.1f} + 100 + {median_files:.1f} = {live_target:.1f} ms; "
        f"live here {median_live:.1f} ms "
        f"({'met' if median_live <= live_target else 'not met'}). With the first audio "
        f"measured before the game started, on idle cores: {statistics.median(live):.1f} + 100 "
        f"+ {median_files:.1f} = {quiet_target:.1f} ms "
        f"({'met' if median_live <= quiet_target else 'not met'}). From the first audio's "
        f"arrival in the addon to the playback position advancing took "
        f"{after_arrival:.1f} ms median (per line), against the voice files' "
        f"{median_files:.1f} from play(). The rest ({in_game_first_audio:.1f} ms median until "
        f"the first audio was in the addon) is the way to the server and back and its "
        f"synthesis of the first clause, with the browser sharing the cores; the Python client "
        f"beside the game got its first audio in {statistics.median(busy):.1f} ms (the game "
        f"sees what the browser received only between frames, and once per frame).",
    ]
    print("\n".join(lines))
    if args.write:
        write_section(RESULTS, SECTION, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
