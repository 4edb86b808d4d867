"""jobs.py: from a request to a synthesis job (cast, limits, text), and whole-line files."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest
import soundfile

from dialogue_tts import errors
from dialogue_tts.cast import Cast
from dialogue_tts.engine import (
    DEFAULT_VOICE_NAME,
    Delivery,
    Engine,
    SynthesisRequest,
    UnknownVoice,
    VoiceCatalog,
    VoiceInfo,
)
from dialogue_tts.errors import RemoteProtocolError
from dialogue_tts.jobs import (
    DEFAULT_LIMITS,
    Limits,
    pronunciation,
    render_file,
    synthesis_request,
)
from dialogue_tts.messages import Prepare, Say, Synthesize
from dialogue_tts.protocol import DEFAULT_MAX_FRAME, Connection, Role

CAST = Cast.from_toml(
    """
[default]
fallback = true

[speakers.Guard]
pitch = 0.8
rate = 1.2
styles.angry = { volume = 1.5 }

[speakers.Bard]
voice = "chorus"
speaker = "alto"

[speakers.Stubborn]
voice = "chorus"
fallback = false

[speakers.Ghost]
voice = "chorus"
speaker = 7
"""
)


@dataclass
class Catalog:
    """The bundled voice, and "chorus": a multi-speaker voice made from its description."""

    default_voice: str = DEFAULT_VOICE_NAME
    voices: dict[str, VoiceInfo] = field(default_factory=dict)

    def __post_init__(self) -> None:
        bundled = VoiceCatalog().info(DEFAULT_VOICE_NAME)
        chorus = dataclasses.replace(
            bundled, name="chorus", speakers=["soprano", "alto"],
            speaker_ids={"soprano": 0, "alto": 1},
        )  # fmt: skip
        self.voices = {bundled.name: bundled, "chorus": chorus}

    def info(self, name: str) -> VoiceInfo:
        if name not in self.voices:
            raise UnknownVoice(name)
        return self.voices[name]


CATALOG = Catalog()


def refused(request: Say | Synthesize | Prepare, limits: Limits = DEFAULT_LIMITS) -> str:
    """The code ``request`` is refused with; it must echo the request's id."""
    with pytest.raises(RemoteProtocolError) as caught:
        synthesis_request(request, CAST, CATALOG, limits)
    assert caught.value.request_id == request.id and not caught.value.fatal
    return caught.value.code


def test_a_line_is_the_same_job_however_it_is_asked_for() -> None:
    """A prepared or synthesized line must hit the cache when it is said, and back."""
    asked = {"speaker": "Guard", "text": "Halt! Who goes there?", "style": "angry", "rate": 1.5}
    jobs = [
        synthesis_request(cls(id=n, **asked), CAST, CATALOG, DEFAULT_LIMITS)
        for n, cls in enumerate((Say, Synthesize, Prepare))
    ]
    assert jobs[0] == jobs[1] == jobs[2]
    job, voice = jobs[0]
    assert voice == CATALOG.info(DEFAULT_VOICE_NAME) and job.voice == DEFAULT_VOICE_NAME
    assert job.delivery.rate == pytest.approx(1.2 * 1.5)  # the cast's, times the request's
    assert job.delivery.pitch == pytest.approx(0.8)
    assert job.volume == pytest.approx(1.5)
    assert job.fallback_voice is None  # fallback is on, but the default voice has no other
    assert "".join(part for part in job.parts if isinstance(part, str)).startswith("Halt!")


def test_a_named_voice_its_speaker_and_its_fallback() -> None:
    bard, chorus = synthesis_request(
        Say(speaker="Bard", text="La la la.", sample_rate=48000), CAST, CATALOG, DEFAULT_LIMITS
    )
    assert chorus.name == bard.voice == "chorus"
    assert bard.delivery.speaker_id == 1  # "alto", by name
    assert bard.fallback_voice == DEFAULT_VOICE_NAME
    assert bard.sample_rate == 48000
    by_request, _ = synthesis_request(
        Say(speaker="Guard", voice="chorus", text="Hm."), CAST, CATALOG, DEFAULT_LIMITS
    )
    assert by_request.voice == "chorus" and by_request.fallback_voice == DEFAULT_VOICE_NAME
    stubborn, _ = synthesis_request(
        Say(speaker="Stubborn", text="No."), CAST, CATALOG, DEFAULT_LIMITS
    )
    assert stubborn.voice == "chorus" and stubborn.fallback_voice is None


def test_text_over_the_limit_is_refused_at_the_limit_it_is_not() -> None:
    limits = Limits(max_text_chars=10)
    assert refused(Say(id="t", speaker="a", text="x" * 11), limits) == errors.TEXT_TOO_LONG
    job, _ = synthesis_request(Say(speaker="a", text="y" * 10), CAST, CATALOG, limits)
    assert job.parts


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (Say(id=1, speaker="a", text="Hi.", voice="../../etc/passwd"), errors.UNKNOWN_VOICE),
        (Say(id=2, speaker="Guard", text="Hi.", style="sleepy"), errors.UNKNOWN_STYLE),
        (Synthesize(id="s", text="{w=1}{b}{/b}", markup="renpy"), errors.EMPTY_TEXT),
        (Say(id=3, speaker="Ghost", text="Boo."), errors.INVALID_CAST),  # chorus has 2 speakers
        (Prepare(id=4, text="Nggh.", lexicon={"Nggh": "/qqq@@/"}), errors.INVALID_FIELD),
    ],
    ids=["unknown-voice", "unknown-style", "empty-text", "no-such-speaker", "bad-lexicon"],
)
def test_what_cannot_be_said_is_a_clear_error(request_: Say, code: str) -> None:
    assert refused(request_) == code


def test_pronunciation_names_the_words_the_lexicon_changes() -> None:
    text = "Nggh, tell Aelindra."
    request = Prepare(id="p", text=text, lexicon={"Aelindra": "ay-LIN-dra"})
    reply = pronunciation(request, CAST, CATALOG, DEFAULT_LIMITS)
    assert (reply.id, reply.voice) == ("p", DEFAULT_VOICE_NAME)
    assert [(text[start:end], entry) for start, end, _, entry in reply.words] == [
        ("Aelindra", "ay-LIN-dra")
    ]
    assert all(phonemes for _, _, phonemes, _ in reply.words)


def test_the_longest_line_allowed_fits_in_a_frame() -> None:
    """max_text_chars is checked after the frame is read: a line at the limit, in the widest
    characters, must still fit in the frame a server accepts."""
    say = Say(id="x" * 256, speaker="s" * 256, text="😀" * DEFAULT_LIMITS.max_text_chars)
    assert len(Connection(Role.CLIENT).send(say)) <= DEFAULT_MAX_FRAME


# --- whole-line files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    made = Engine(VoiceCatalog(), workers=1)
    yield made
    made.close()


@pytest.mark.parametrize("file_format", ["wav", "ogg", "flac"])
async def test_files_round_trip_at_any_sample_rate(engine: Engine, file_format: str) -> None:
    text = ["Fine wares, cheap!"]
    steady = Delivery(noise_w=0.0)  # the same phoneme lengths in both renders
    native = await render_file(
        engine, SynthesisRequest(text, DEFAULT_VOICE_NAME, steady), file_format
    )
    resampled = await render_file(
        engine, SynthesisRequest(text, DEFAULT_VOICE_NAME, steady, sample_rate=48000), file_format
    )
    for rendered, rate in ((native, 22050), (resampled, 48000)):
        audio, read_rate = soundfile.read(io.BytesIO(rendered.data), dtype="float32")
        assert read_rate == rendered.sample_rate == rate
        assert len(audio) / rate == pytest.approx(rendered.duration, abs=0.01)
        assert 0.05 < float(np.sqrt(np.mean(audio**2))) < 0.5  # speech, not silence or noise
    assert resampled.duration == pytest.approx(native.duration, abs=0.01)
