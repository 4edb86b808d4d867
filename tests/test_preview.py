"""``dialogue-tts preview``: scripts, the mixed scene and its subtitles."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from dialogue_tts.preview import SAME_SPEAKER_GAP, SPEAKER_CHANGE_GAP, ScriptError, read_script

SCENE = """\
# The gate, at dusk.
GUARD (angry): Halt! Who goes there?
TRAVELER: A friend, with papers.
(pause 1.0)
GUARD: Let me see them.
GUARD: Hm. Go on, then.
"""
CAST = """
[speakers.GUARD]
pitch = 0.85
styles.angry = { rate = 1.15, volume = 1.3 }

[speakers.TRAVELER]
pitch = 1.1
"""


def test_text_json_and_csv_scripts(tmp_path: Path) -> None:
    text = tmp_path / "scene.txt"
    text.write_text(SCENE)
    lines = read_script(text)
    assert [(ln.speaker, ln.style, ln.pause_before) for ln in lines] == [
        ("GUARD", "angry", 0.0), ("TRAVELER", None, 0.0), ("GUARD", None, 1.0),
        ("GUARD", None, 0.0),
    ]  # fmt: skip
    assert lines[0].text == "Halt! Who goes there?" and lines[0].where == "scene.txt:2"
    json_script = tmp_path / "scene.json"
    json_script.write_text(
        '[{"speaker": "A", "text": "Hi.", "style": "calm"}, {"pause": 2}, '
        '{"speaker": "B", "text": "Hello."}]'
    )
    assert [(ln.speaker, ln.style, ln.pause_before) for ln in read_script(json_script)] == [
        ("A", "calm", 0.0), ("B", None, 2.0),
    ]  # fmt: skip
    csv_script = tmp_path / "scene.csv"
    csv_script.write_text('Speaker,Text,Style\nA,"Hi, you.",\nB,Hello.,whisper\n')
    assert [(ln.speaker, ln.text, ln.style) for ln in read_script(csv_script)] == [
        ("A", "Hi, you.", None), ("B", "Hello.", "whisper"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.txt", "GUARD: Halt!\nthis line has no speaker\n", "a.txt:2: expected 'NAME: line'"),
        ("a.txt", "GUARD: Halt!\n(pause 99)\nA: b\n", "a.txt:2: a pause must be 0 to 30"),
        ("a.txt", "# only a comment\n", "no lines to say"),
        ("a.json", '[{"speaker": "A", "text": "x"}, {"speaker": "B"}]', "a.json: entry 2: text"),
        ("a.json", '[{"speaker": "A",\n "text": }]', "a.json:2: not valid JSON"),
        ("a.csv", "who,what\nA,b\n", "a.csv:1: the header needs 'speaker' and 'text'"),
        ("a.csv", "speaker,text\nA,b\n,c\n", "a.csv:3: speaker must be"),
    ],
)
def test_malformed_scripts_name_the_line(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ScriptError, match=re.escape(message)):
        read_script(path)


def cue_times(srt: str) -> list[tuple[float, float]]:
    def seconds(stamp: str) -> float:
        hours, minutes, rest = stamp.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(rest.replace(",", "."))

    return [(seconds(start), seconds(end)) for start, end in re.findall(r"(\S+) --> (\S+)", srt)]


def test_a_scene_preview_matches_its_subtitles(tmp_path: Path) -> None:
    (tmp_path / "scene.txt").write_text(SCENE)
    (tmp_path / "cast.toml").write_text(CAST)
    result = subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "preview", str(tmp_path / "scene.txt"),
         "--cast", str(tmp_path / "cast.toml"), "--cache-dir", str(tmp_path / "cache"),
         "-o", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    scene, rate = soundfile.read(out / "scene.wav", dtype="float32")
    per_line = sorted((out / "lines").iterdir())
    assert [p.name for p in per_line] == [
        "001-GUARD.wav", "002-TRAVELER.wav", "003-GUARD.wav", "004-GUARD.wav",
    ]  # fmt: skip
    cues = cue_times((out / "scene.srt").read_text())
    assert "GUARD: Halt! Who goes there?" in (out / "scene.srt").read_text()
    assert len(cues) == 4 and cues[0][0] == 0.0
    assert cues[-1][1] == pytest.approx(len(scene) / rate, abs=0.002)  # the scene ends there
    for (start, end), path in zip(cues, per_line, strict=True):
        line, _ = soundfile.read(path, dtype="float32")
        assert end - start == pytest.approx(len(line) / rate, abs=0.002)
        # Each line sits where its cue says, to the cue's millisecond (22 samples).
        first = round(start * rate)
        offsets = range(max(first - 30, 0), min(first + 31, len(scene) - len(line) + 1))
        error = min(np.max(np.abs(scene[o : o + len(line)] - line)) for o in offsets)
        assert error < 1e-3
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(cues)]
    assert gaps == pytest.approx(
        [SPEAKER_CHANGE_GAP, SPEAKER_CHANGE_GAP + 1.0, SAME_SPEAKER_GAP], abs=0.002
    )
    for (_, end), (start, _) in itertools.pairwise(cues):
        assert np.max(np.abs(scene[round(end * rate) : round(start * rate)])) < 1e-3  # silence
