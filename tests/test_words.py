"""``dialogue-tts words``: the names report, on tests/data, on dialogue.tab exports (one
written like the launcher's, one that Ren'Py itself exports) and on plain text."""

from __future__ import annotations

import csv
import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import soundfile

from dialogue_tts.cast import Cast
from dialogue_tts.engine import VoiceCatalog
from dialogue_tts.espeak import lookup
from dialogue_tts.words import find_words, read_lines
from tests.helpers import CORPUS
from tests.test_renpy import _game_copy, _run_renpy, needs_renpy

HEADER = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
ROWS = [
    ("start_1", "", "The gates of Vhoryn were shut.", 10),
    ("start_2", "e", "{b}Aelindra{/b}! Tch. Where is [player_name]?", 12),
    ("start_3", "l", "Nggh. Ask Aelindra, or ask the Xal'thar.", 14),
]


def run_words(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "words", *map(str, args), "--no-cache"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def rows_of(output: str) -> dict[str, dict[str, str]]:
    return {row["word"]: row for row in csv.DictReader(io.StringIO(output))}


def test_the_report_on_tests_data_counts_and_places_each_word() -> None:
    catalog = VoiceCatalog()
    lines = read_lines(CORPUS / "scene.txt")
    assert lines[0].speaker == "INNKEEPER" and lines[0].where == "scene.txt:2"
    text = (CORPUS / "scene.txt").read_text(encoding="utf-8")
    said = "\n".join(line.text for line in lines)
    # Every word of the scene is in espeak's dictionary or read by its rules: none is listed
    # by default; --all lists those the dictionary lacks, each counted and placed.
    assert find_words(lines, Cast(), catalog) == []
    every = find_words(lines, Cast(), catalog, every=True)
    assert every, "no word of the scene outside espeak's dictionary"
    for word in every:
        assert not lookup("en-us", word.word).in_dictionary
        assert word.count == len(re.findall(rf"(?<!\w){re.escape(word.word)}(?!\w)", said))
        assert re.search(rf"(?<!\w){re.escape(word.word)}(?!\w)", word.first.text)
        number = int(word.first.where.split(":")[1])
        assert word.first.text in text.splitlines()[number - 1]


def test_the_report_on_a_dialogue_tab_with_a_lexicon(tmp_path: Path) -> None:
    export = tmp_path / "dialogue.tab"
    rows = [f'{i}\t{who}\t{what}\tgame/script.rpy\t{n}\t"[what]"' for i, who, what, n in ROWS]
    export.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    cast = tmp_path / "cast.toml"
    cast.write_text('[lexicon]\nAelindra = "ay-LIN-dra"\nTch = "/tʃ/"\n', encoding="utf-8")
    result = run_words(export, "--cast", cast, "--csv")
    assert result.returncode == 0, result.stderr
    report = rows_of(result.stdout)
    # Markup and Ren'Py's [interpolations] are not words; names are, wherever they stand.
    assert list(report) == ["Vhoryn", "Aelindra", "Tch", "Nggh", "Xal'thar"]
    assert report["Aelindra"]["count"] == "2" and report["Aelindra"]["why"] == "lexicon"
    assert report["Aelindra"]["lexicon"] == "ay-LIN-dra"
    assert report["Aelindra"]["phonemes"] == "eɪlˈɪndɹɑː"
    assert report["Aelindra"]["where"] == "game/script.rpy:12"
    assert report["Tch"]["phonemes"] == "tʃ" and report["Tch"]["lexicon"] == "/tʃ/"
    assert report["Nggh"]["why"] == "spelled out" and report["Nggh"]["lexicon"] == ""
    assert report["Xal'thar"]["why"] == "name"
    assert report["Xal'thar"]["first_line"] == ROWS[2][2]
    table = run_words(export, "--cast", cast)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["WORD", "COUNT", "SAID", "AS", "LEXICON",
                                                    "WHY", "FIRST", "LINE"]  # fmt: skip
    assert "5 words, 2 covered by the lexicon" in table.stdout


def test_clips_of_each_word_and_plain_text(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("We rode past Vhoryn at dawn.\n\nNo one in Vhoryn spoke.\n", encoding="utf-8")
    result = run_words(text, "--out", tmp_path / "clips")
    assert result.returncode == 0, result.stderr
    assert "Vhoryn" in result.stdout and "notes.txt:1" in result.stdout
    audio, rate = soundfile.read(tmp_path / "clips" / "Vhoryn.wav")
    assert rate == 22050 and 0.2 < len(audio) / rate < 3.0 and abs(audio).max() > 0.05


@needs_renpy
def test_the_report_on_a_dialogue_tab_that_renpy_exported(tmp_path: Path) -> None:
    game = _game_copy(tmp_path)
    export = _run_renpy(game, "dialogue", "None")
    assert export.returncode == 0, export.stdout + export.stderr
    lines = read_lines(game / "dialogue.tab")
    assert lines and all(line.markup == "renpy" for line in lines)
    result = run_words(game / "dialogue.tab", "--csv", "--all")
    assert result.returncode == 0, result.stderr
    report = rows_of(result.stdout)
    texts = {line.text for line in lines}
    assert any("{" in text or "[" in text for text in texts)  # Ren'Py markup is in the export
    assert not {"b", "w", "player_name"} & set(report)  # and never read as words
    for word, row in report.items():
        assert row["first_line"] in texts and word in row["first_line"]
        assert int(row["count"]) >= 1 and row["phonemes"]
