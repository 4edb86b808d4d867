"""A second voice family for tests of the seam: one module, registered by name.

A "tone voice" is a file ``NAME.tone`` in the voices folder holding a frequency in Hz. Its
units are the letters of the text; each letter is ``LETTER_SAMPLES`` of a sine, made by a
one-node ONNX graph (``Sin``) through ``family.run_session``, so skips and preemption abort
it exactly as they abort a real model. Durations are exact, so pieces carry timings.
``broken.tone`` fails to load (for fallback tests).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper

from dialogue_tts.pieces import split_sentence
from dialogue_tts.timings import PhonemeUnit, WordSpan, word_spans
from dialogue_tts.voices.family import (
    CancelToken,
    Delivery,
    SynthesisError,
    Timed,
    VoiceInfo,
    VoiceSource,
    run_session,
    session_options,
)
from dialogue_tts.workers import Lease

SAMPLE_RATE: Final = 16_000
LETTER_SAMPLES: Final = 800
"""50 ms per letter at normal rate."""
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _sine_model() -> bytes:
    phase = helper.make_tensor_value_info("phase", TensorProto.FLOAT, ["n"])
    audio = helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n"])
    graph = helper.make_graph(
        [helper.make_node("Sin", ["phase"], ["audio"])], "tone", [phase], [audio]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


class ToneVoice:
    def __init__(self, info: VoiceInfo, frequency: float, threads: int) -> None:
        self.info = info
        self.frequency = frequency
        self.gain = 0.5
        self.timed = True
        self.digest: str | None = None
        self.calibration = None
        self.sessions = {threads: self._session(threads)}
        self.calls_by_threads: dict[int, int] = {}

    @staticmethod
    def _session(threads: int) -> onnxruntime.InferenceSession:
        return onnxruntime.InferenceSession(
            _sine_model(), session_options(threads), ["CPUExecutionProvider"]
        )

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    def add_session(self, threads: int) -> None:
        self.sessions.setdefault(threads, self._session(threads))

    def release_memory(self, lease: Lease) -> None:
        """A one-node graph keeps no working memory worth handing back."""

    def phonemize(self, text: str) -> list[list[str]]:
        return [list(sentence.lower()) for sentence in _SENTENCE.split(text) if sentence.strip()]

    def first_piece(
        self,
        text: str,
        first: bool,
        delivery: Delivery,
        cancel: CancelToken | None = None,
        words: bool = False,
        lease: Lease | None = None,
    ) -> tuple[Sequence[Any], Timed | None, list[WordSpan]]:
        sentences = self.phonemize(text)
        pieces = [
            piece
            for index, sentence in enumerate(sentences)
            for piece in split_sentence(sentence, first=first and index == 0)
        ]
        timed = self.infer_timed(pieces[0], delivery, cancel, lease) if pieces else None
        spans = word_spans(text, sentences, self.phonemize) if words else []
        return pieces, timed, spans

    def infer_timed(
        self,
        piece: list[str],
        delivery: Delivery,
        cancel: CancelToken | None = None,
        lease: Lease | None = None,
    ) -> Timed:
        per_letter = round(LETTER_SAMPLES / delivery.rate)
        phase = 2 * np.pi * self.frequency * delivery.pitch / SAMPLE_RATE
        phases = (np.arange(per_letter * len(piece), dtype=np.float32) * phase).astype(np.float32)
        threads = lease.threads if lease is not None else next(iter(self.sessions))
        session = self.sessions.get(threads, next(iter(self.sessions.values())))
        self.calls_by_threads[threads] = self.calls_by_threads.get(threads, 0) + 1
        (audio,) = run_session(session, {"phase": phases}, self.info.name, cancel, lease)
        units = [
            PhonemeUnit(letter, index * per_letter, per_letter)
            for index, letter in enumerate(piece)
        ]
        return np.asarray(audio, np.float32), units


class ToneFamily:
    name: Final = "tone"

    def discover(self, voices_dir: Path) -> tuple[list[VoiceSource], set[Path]]:
        sources = [
            VoiceSource(
                VoiceInfo(
                    name=f"tone:{path.stem}",
                    language="en-US",
                    sample_rate=SAMPLE_RATE,
                    speakers=[],
                    family=self.name,
                    gender=None,
                ),
                (path,),
            )
            for path in sorted(voices_dir.glob("*.tone"))
        ]
        return sources, set()

    def resolve(self, name: str, known: Mapping[str, VoiceSource]) -> VoiceSource | None:
        return None

    def load(self, source: VoiceSource, threads: int, calibration: Any = None) -> ToneVoice:
        if source.files[0].stem == "broken":
            raise SynthesisError("this tone voice is broken")
        return ToneVoice(source.info, float(source.files[0].read_text()), threads)

    def calibration_record(self, digest: str) -> str | None:
        return None


FAMILY: Final = ToneFamily()
