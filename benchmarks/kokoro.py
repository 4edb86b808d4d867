"""Kokoro-82M next to Piper, per family and language: real-time factor, first audio of a new
and of a prepared line, and memory.

    .venv/bin/python benchmarks/kokoro.py --voices .ci/assets/kokoro [--lines 6]

Each voice runs in its own process (so that RSS is that voice's alone) through the engine,
as the server uses it, with the pool's own choice of threads:

- real-time factor: synthesis time over audio duration, whole lines rendered one at a time
  (English: the corpus's short and medium lines; other languages: fixed game lines);
- first audio, new line: from asking to the first piece of a line never said before;
- first audio, prepared line: the same after ``prepare`` (as a game that knows its next line);
- RSS after loading the voice and after the lines, and the peak (VmHWM);
- Piper's real-time factor on the English lines in the same process right after, for the
  ratio (the machine may be shared: figures taken minutes apart are not comparable).

Writes its section of benchmarks/RESULTS.md (``results.write_section``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CORPUS = ROOT / "tests" / "data" / "dialogue-lines.jsonl"
VOICES = {
    "en_US-joe-medium": "en_US",
    "kokoro:af_heart": "en-US",
    "kokoro:bm_george": "en-GB",
    "kokoro:jf_alpha": "ja",
    "kokoro:ef_dora": "es",
    "kokoro:ff_siwis": "fr",
    "kokoro:zf_xiaobei": "zh",
}
LINES = {
    "ja": ["止まれ！誰だ？", "北への道は長く、夜は寒い。", "この町へようこそ、旅の方。",
           "橋は昨夜落ちた。川を渡るには船が要る。"],
    "es": ["¡Alto! ¿Quién anda ahí?", "El camino al norte es largo, y la noche es fría.",
           "Bienvenido a nuestra aldea, viajero."],
    "fr": ["Halte ! Qui va là ?", "La route du nord est longue, et la nuit est froide.",
           "Bienvenue dans notre village, voyageur."],
    "zh": ["站住！谁在那里？", "北方的路很长，夜里很冷。", "欢迎来到我们的村子，旅行者。",
           "桥昨晚塌了，要过河得坐船。"],
}  # fmt: skip
PREPARED_TAIL = {"ja": "はい。", "zh": "好。"}
"""Added to each line to make the prepared one new: a word of its language ("Now." else)."""


def _rss_mib(field: str = "VmRSS") -> float:
    for row in Path("/proc/self/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1]) / 1024
    return float("nan")


def _lines(language: str, count: int) -> list[str]:
    if language.startswith("en"):
        rows = [json.loads(row) for row in CORPUS.open(encoding="utf-8")]
        return [row["text"] for row in rows if row["kind"] in ("short", "medium")][:count]
    return LINES[language][:count]


async def _measure(voices_dir: Path, voice: str, count: int) -> dict[str, float]:
    from dialogue_tts.engine import CancelToken, Engine, SynthesisRequest, VoiceCatalog
    from dialogue_tts.text import prepare

    engine = Engine(VoiceCatalog(voices_dir))
    language = engine.catalog.info(voice).language
    started = time.perf_counter()
    loaded = await engine.voice(voice)
    await engine.sessions_ready()
    result: dict[str, float] = {"load_s": time.perf_counter() - started, "rss_load": _rss_mib()}
    lines = _lines(VOICES[voice], count)

    def request(text: str) -> SynthesisRequest:
        return SynthesisRequest(prepare(text, "plain", language), voice)

    synth = audio = 0.0
    for text in lines:
        started = time.perf_counter()
        samples, rate = await engine.render(request(text))
        synth += time.perf_counter() - started
        audio += len(samples) / rate
    result["rtf"] = synth / audio
    result["audio_s"] = audio

    async def first_audio(text: str) -> float:
        started = time.perf_counter()
        stream = engine.stream(request(text), CancelToken())
        await anext(stream)
        elapsed = time.perf_counter() - started
        await stream.aclose()
        return elapsed

    # New: a line not said before (each line once more, a word added so no cache holds it).
    new = [await first_audio(text + " " + text.split()[0]) for text in lines]
    prepared = []
    tail = PREPARED_TAIL.get(VOICES[voice], " Now.")
    for text in lines:
        await engine.prepare(request(text + tail))
        prepared.append(await first_audio(text + tail))
    result["first_new_ms"] = 1000 * statistics.median(new)
    result["first_prepared_ms"] = 1000 * statistics.median(prepared)
    result["rss_after"] = _rss_mib()
    result["rss_peak"] = _rss_mib("VmHWM")
    result["sample_rate"] = loaded.sample_rate
    # Piper on the English lines, in this process right after, so that the ratio compares
    # two measurements under the same load (the machine is shared).
    piper, english = engine.catalog.default_voice, _lines("en_US", count)
    await engine.voice(piper)
    synth = audio = 0.0
    for text in english:
        started = time.perf_counter()
        samples, rate = await engine.render(SynthesisRequest(prepare(text, "plain", "en"), piper))
        synth += time.perf_counter() - started
        audio += len(samples) / rate
    result["piper_rtf"] = synth / audio
    engine.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices", type=Path, required=True, help="folder with the Kokoro files")
    parser.add_argument("--lines", type=int, default=6, help="lines per voice")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one voice
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(_measure(args.voices, args.one, args.lines))))
        return 0
    rows: dict[str, dict[str, float]] = {}
    for voice in VOICES:
        done = subprocess.run(
            [sys.executable, __file__, "--voices", str(args.voices), "--lines", str(args.lines),
             "--one", voice],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        rows[voice] = json.loads(done.stdout.strip().splitlines()[-1])
        print(voice, rows[voice], flush=True)
    table = [
        "## Kokoro-82M next to Piper (benchmarks/kokoro.py)",
        "",
        f"One run, {os.cpu_count()} cores shared with other work (figures are noisy; read "
        "the ratios: × Piper divides by Piper's real-time factor on the English lines, "
        "measured in the same process right after; the Piper row compares Piper with itself, "
        "so its distance from 1 is this run's noise). Each voice in its own process, "
        f"through the engine with the pool's own thread choice; {args.lines} lines per voice "
        "(English: the corpus's short and medium lines; others: fixed game lines). First "
        "audio is the median over the same lines, once new and once after `prepare`.",
        "",
        "| voice | language | real-time factor | × Piper | first audio, new line | "
        "first audio, prepared | RSS after load | RSS after lines | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for voice, row in rows.items():
        ratio = row["rtf"] / row["piper_rtf"]
        table.append(
            f"| {voice} | {VOICES[voice]} | {row['rtf']:.2f} | {ratio:.1f} | "
            f"{row['first_new_ms']:.0f} ms | {row['first_prepared_ms']:.1f} ms | "
            f"{row['rss_load']:.0f} MiB | {row['rss_after']:.0f} MiB | {row['rss_peak']:.0f} MiB |"
        )
    print("\n".join(table))
    if not args.no_write:
        from results import write_section

        write_section(ROOT / "benchmarks" / "RESULTS.md", "kokoro", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
