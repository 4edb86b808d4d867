"""``dialogue-tts renpy-render`` on a large game: stopped hard and resumed, it redoes no file
it had finished (the journal of finished lines survives a kill)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    return [sys.executable, "-m", "dialogue_tts", "renpy-render", str(export), "--quiet"]


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
