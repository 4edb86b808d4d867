"""``dialogue-tts renpy-render``: a dialogue export written like the launcher's rendered to one
file per line, again only where a line or its voice changed, and malformed input refused; on a
large game, stopped hard and resumed, it redoes no file it had finished (the journal of
finished lines survives a kill)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile
from helpers import COMMAND, run_command

from dialogue_tts.renpy_render import JOURNAL_NAME, MANIFEST_NAME

HEADER = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
CORPUS = Path(__file__).parent / "data" / "dialogue-lines.jsonl"
HANG_GUARD = 600


def _export(path: Path, count: int) -> list[str]:
    texts = [json.loads(row)["text"] for row in CORPUS.read_text().splitlines()]
    identifiers = [f"line_{index:04d}" for index in range(count)]
    rows = [
        f'{ident}\te\t{texts[index % len(texts)]}\tgame/script.rpy\t{index + 1}\te "[what]"'
        for index, ident in enumerate(identifiers)
    ]
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    return identifiers


def _command(export: Path) -> list[str]:
    return [*COMMAND, "renpy-render", str(export), "--quiet"]


def test_a_killed_render_resumes_without_redoing_finished_lines(tmp_path: Path) -> None:
    export = tmp_path / "dialogue.tab"
    identifiers = _export(export, 40)
    voice_dir = tmp_path / "game" / "voice"
    journal = voice_dir / JOURNAL_NAME

    process = subprocess.Popen(_command(export), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + HANG_GUARD
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and journal.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the render ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()

    finished = {json.loads(row)["id"] for row in journal.read_text().splitlines() if row}
    assert 3 <= len(finished) < len(identifiers)
    kept = {name: (voice_dir / f"{name}.ogg").stat().st_mtime_ns for name in finished}

    again = subprocess.run(_command(export), capture_output=True, text=True, timeout=HANG_GUARD)
    assert again.returncode == 0, again.stderr
    # Lines that were written but not yet journalled when the kill came are rendered again;
    # every journalled one is up to date.
    up_to_date = int(again.stdout.split(" up to date")[0].rsplit(", ", 1)[1])
    assert up_to_date >= len(finished), again.stdout
    assert {name: (voice_dir / f"{name}.ogg").stat().st_mtime_ns for name in finished} == kept
    assert sorted(p.stem for p in voice_dir.glob("*.ogg")) == identifiers
    # A finished run folds the journal into the manifest.
    assert not journal.exists()
    manifest = json.loads((voice_dir / MANIFEST_NAME).read_text())
    assert sorted(manifest["files"]) == identifiers


EXPORT_ROWS = [
    ("start_dae2eec0", "", "The tavern is quiet tonight.", 24, '"[what]"'),
    ("start_1d74fc79", "e", "Welcome back, {b}friend{/b}.{w=0.5} Stew again?", 26, 'e "[what]"'),
    ("start_01e9ee3a", "l", "Yes, please. And some bread, if there is any left.", 28,
     'l "[what]"'),
    ("start_12a510bc", "e", "There is always bread for you, [player_name].", 30, 'e "[what]"'),
    ("start_5df5b90c", "l", "The road was cold, the rain never stopped, and the bridge at the "
     "ford was gone, so we walked the long way round the hills.", 32, 'l "[what]"'),
    ("start_49c31aba", "g", "Move along.", 36, 'g "[what]"'),
    ("start_00000000", "e", "{w=1.0}{nw}", 38, 'e "[what]"'),
]  # fmt: skip


def _write_export(path: Path, rows: list[tuple[Any, ...]] = EXPORT_ROWS) -> Path:
    lines = [HEADER] + [
        f"{ident}\t{who}\t{what}\tgame/script.rpy\t{number}\t{script}"
        for ident, who, what, number, script in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _render(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run_command("renpy-render", *args)


def test_renpy_render(tmp_path: Path) -> None:
    export = _write_export(tmp_path / "dialogue.tab")
    mapping = tmp_path / "voices.json"
    mapping.write_text(json.dumps({"l": {"rate": 1.2}, "g": None, "narrator": {"rate": 0.9}}))
    result = _render(export, "--map", mapping)
    assert result.returncode == 0, result.stderr
    voice_dir = tmp_path / "game" / "voice"
    written = sorted(p.name for p in voice_dir.glob("*.ogg"))
    # The guard is mapped to null and the last line has no words: neither gets a file.
    assert written == sorted(f"{row[0]}.ogg" for row in EXPORT_ROWS[:5])
    assert "5 to render" in result.stderr + result.stdout
    assert "5/5" in result.stderr  # the progress bar reached the end
    durations = {}
    for path in voice_dir.glob("*.ogg"):
        audio, rate = soundfile.read(path)
        assert rate == 22050 and audio.ndim == 1
        assert np.abs(audio).max() > 0.05  # speech, not silence
        durations[path.stem] = len(audio) / rate
    assert all(0.8 < seconds < 20 for seconds in durations.values()), durations
    assert durations["start_5df5b90c"] > 2 * durations["start_dae2eec0"]  # longer line, longer
    # The {w=0.5} became half a second of silence inside the line.
    audio, rate = soundfile.read(voice_dir / "start_1d74fc79.ogg")
    quiet = np.convolve(np.abs(audio) < 0.01, np.ones(int(0.4 * rate)), "valid")
    assert quiet.max() >= int(0.4 * rate)

    # A second run renders nothing; files are left alone.
    mtimes = {p.name: p.stat().st_mtime_ns for p in voice_dir.glob("*.ogg")}
    again = _render(export, "--map", mapping, "--quiet")
    assert again.returncode == 0, again.stderr
    assert "0 to render, 5 up to date" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in voice_dir.glob("*.ogg")} == mtimes

    # Changing Lucy's settings and one of Eileen's lines renders exactly those files again.
    mapping.write_text(json.dumps({"l": {"rate": 1.0}, "g": None, "narrator": {"rate": 0.9}}))
    rows = list(EXPORT_ROWS)
    rows[1] = ("start_1d74fc79", "e", "Welcome back, friend. Soup again?", 26, 'e "[what]"')
    _write_export(export, rows)
    third = _render(export, "--map", mapping, "--quiet")
    assert third.returncode == 0, third.stderr
    assert "3 to render, 2 up to date" in third.stdout
    changed = {
        name for name, mtime in mtimes.items() if (voice_dir / name).stat().st_mtime_ns != mtime
    }
    assert changed == {"start_1d74fc79.ogg", "start_01e9ee3a.ogg", "start_5df5b90c.ogg"}
    assert not list(voice_dir.glob(".*.ogg.*")), "temporary files left behind"


def test_renpy_render_output_option_and_default_mapping(tmp_path: Path) -> None:
    export = _write_export(tmp_path / "dialogue.tab", EXPORT_ROWS[:1] + EXPORT_ROWS[5:6])
    result = _render(export, "-o", tmp_path / "out", "--quiet")
    assert result.returncode == 0, result.stderr
    # Without a mapping, narration and every character are voiced with the default voice.
    assert sorted(p.name for p in (tmp_path / "out").glob("*.ogg")) == [
        "start_49c31aba.ogg", "start_dae2eec0.ogg"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not a Ren'Py dialogue export"),
        ("e\tHello.\n", "not a Ren'Py dialogue export"),
        ("e: Hello.\n", "not a Ren'Py dialogue export"),  # the launcher's plain-text export
        (HEADER + "\nstart_1\te\tHello.\tgame/script.rpy\t3\n", "dialogue.tab:2: expected 6"),
        (HEADER + '\nbad id\te\tHello.\tgame/script.rpy\t3\te "[what]"\n', "bad Identifier"),
        (HEADER + "\na\te\tHi.\tg.rpy\t3\tx\na\te\tHi.\tg.rpy\t4\tx\n", "already on line 2"),
    ],
)
def test_renpy_render_malformed_export(tmp_path: Path, content: str, message: str) -> None:
    export = tmp_path / "dialogue.tab"
    export.write_text(content, encoding="utf-8")
    result = _render(export, "--quiet")
    assert result.returncode == 2
    assert message in result.stderr
    assert not (tmp_path / "game").exists()


def test_renpy_render_bad_mapping(tmp_path: Path) -> None:
    export = _write_export(tmp_path / "dialogue.tab", EXPORT_ROWS[:1])
    mapping = tmp_path / "voices.json"
    mapping.write_text(json.dumps({"e": {"speed": 2}}))
    result = _render(export, "--map", mapping)
    assert result.returncode == 2 and "unknown setting 'speed'" in result.stderr
    mapping.write_text(json.dumps({"narrator": {"voice": "nobody"}}))
    result = _render(export, "--map", mapping)
    assert result.returncode == 1 and "no voice named 'nobody'" in result.stderr
