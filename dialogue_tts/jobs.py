"""From a request to a synthesis job: the cast, the limits and the text, in one place.

Every way of saying a line (a queued say, a synthesize or prepare request, the CLI's say,
renpy-render and preview) goes through ``synthesis_request``, so that a line prepared one way
hits the cache when it is said another way.
"""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass
from typing import Final, Protocol

from . import errors
from .audio import encode_file
from .cast import NOISE_FAMILIES, Cast, UnknownStyle
from .engine import Engine, SynthesisRequest, UnknownVoice, VoiceInfo
from .errors import RemoteProtocolError
from .lexicon import LexiconError, WordBook, changed_words
from .messages import LineId, Pronunciation, TextRequest
from .text import prepare

__all__ = [
    "DEFAULT_LIMITS",
    "Catalog",
    "Limits",
    "RenderedFile",
    "line_words",
    "pronunciation",
    "render_file",
    "synthesis_request",
]


@dataclass(frozen=True)
class Limits:
    """Bounds on what one connection may ask for, and the one place each is checked: every
    ``check_*`` raises RemoteProtocolError (naming the request) when a request is over."""

    max_text_chars: int = 5000
    """Per line; far below what fits in a 1 MiB frame."""
    max_queue: int = 64
    """Lines per speaker, counting the current one."""
    max_speakers: int = 32
    """Speakers per connection; idle speakers are forgotten to make room."""
    max_scene_chars: int = 10_000
    """Text of one synthesize_scene, all lines together: about 12 minutes of speech, whose
    WAV (32 MiB at 22.05 kHz) fits in one audio_file frame."""
    max_file_requests: int = 4
    """synthesize, synthesize_scene and prepare requests in flight per connection."""

    def check_text(self, text: str, request_id: LineId | None) -> None:
        if len(text) > self.max_text_chars:
            raise RemoteProtocolError(
                errors.TEXT_TOO_LONG,
                f"text has {len(text)} characters; the limit is {self.max_text_chars}",
                request_id,
            )

    def check_scene(self, chars: int, request_id: LineId | None) -> None:
        if chars > self.max_scene_chars:
            raise RemoteProtocolError(
                errors.TEXT_TOO_LONG,
                f"the scene has {chars} characters of text; the limit is {self.max_scene_chars}",
                request_id,
            )

    def check_queue(self, speaker: str, lines: int, request_id: LineId | None) -> None:
        """``lines``: the speaker's lines now, counting the current one."""
        if lines >= self.max_queue:
            raise RemoteProtocolError(
                errors.QUEUE_FULL,
                f"speaker {speaker!r} already has {self.max_queue} lines",
                request_id,
            )

    def check_speakers(self, speakers: int, any_idle: bool, request_id: LineId | None) -> bool:
        """Whether a new speaker needs an idle one forgotten to make room (``any_idle``:
        one can be); raises when none can be."""
        if speakers < self.max_speakers:
            return False
        if not any_idle:
            raise RemoteProtocolError(
                errors.TOO_MANY_SPEAKERS,
                f"this connection already has {self.max_speakers} busy speakers",
                request_id,
            )
        return True

    def check_file_requests(self, running: int, request_id: LineId | None) -> None:
        if running >= self.max_file_requests:
            raise RemoteProtocolError(
                errors.QUEUE_FULL,
                f"{self.max_file_requests} synthesize/prepare requests are already running",
                request_id,
            )


DEFAULT_LIMITS: Final = Limits()


class Catalog(Protocol):
    default_voice: str

    def info(self, name: str) -> VoiceInfo: ...


def synthesis_request(
    request: TextRequest, cast: Cast, catalog: Catalog, limits: Limits
) -> tuple[SynthesisRequest, VoiceInfo]:
    """Resolve a say, synthesize or prepare through the cast, check it against the limits
    and prepare its text; returns the job and its voice. Raises RemoteProtocolError."""
    text, request_id = request.text, request.id
    limits.check_text(text, request_id)
    try:
        casting = cast.resolve(
            request.speaker, request.style, voice=request.voice,
            rate=request.rate, pitch=request.pitch, volume=request.volume,
        )  # fmt: skip
    except UnknownStyle as exc:
        raise RemoteProtocolError(errors.UNKNOWN_STYLE, str(exc), request_id) from None
    voice_name = casting.voice or catalog.default_voice
    try:
        voice = catalog.info(voice_name)
    except UnknownVoice:
        raise RemoteProtocolError(
            errors.UNKNOWN_VOICE, f"no voice named {voice_name!r}", request_id
        ) from None
    delivery = casting.delivery
    if voice.family not in NOISE_FAMILIES:  # settings the voice ignores split no cache entry
        delivery = dataclasses.replace(delivery, noise_scale=None, noise_w=None)
    if casting.speaker is not None:
        speaker_id = _speaker_id(voice, casting.speaker, request_id)
        delivery = dataclasses.replace(delivery, speaker_id=speaker_id)
    parts = prepare(text, request.markup, voice.language, line_words(request, cast, voice))
    if not parts:
        raise RemoteProtocolError(
            errors.EMPTY_TEXT, "nothing to say once markup is removed", request_id
        )
    fallback = casting.fallback and voice.name != catalog.default_voice
    job = SynthesisRequest(
        parts=parts, voice=voice.name, delivery=delivery, volume=casting.volume,
        fallback_voice=catalog.default_voice if fallback else None,
        sample_rate=request.sample_rate,
    )  # fmt: skip
    return job, voice


def line_words(request: TextRequest, cast: Cast, voice: VoiceInfo) -> WordBook:
    """The lexicon entries a line uses: the cast's for its voice, and the request's own
    (``lexicon``), checked against the voice. Raises RemoteProtocolError."""
    if not request.lexicon:
        return cast.words(voice)
    try:
        lexicon = cast.lexicon.with_line(request.lexicon, f"{request.TYPE}.lexicon")
        WordBook(lexicon.line, voice.espeak_voice).check(voice)
    except LexiconError as exc:
        raise RemoteProtocolError(errors.INVALID_FIELD, str(exc), request.id) from None
    return lexicon.book(voice.name, voice.language, voice.espeak_voice)


def pronunciation(
    request: TextRequest, cast: Cast, catalog: Catalog, limits: Limits
) -> Pronunciation:
    """The words of a line that the lexicon changes (a ``pronounce`` request's reply)."""
    job, voice = synthesis_request(request, cast, catalog, limits)
    words = line_words(request, cast, voice)
    found = []
    for start, end, phonemes in changed_words(job.parts):
        entry = words.entry(request.text[start:end])
        found.append([start, end, phonemes, entry.value if entry is not None else ""])
    return Pronunciation(id=request.id, voice=voice.name, words=found)


def _speaker_id(voice: VoiceInfo, speaker: str | int, request_id: LineId | None) -> int:
    """The id of a multi-speaker voice's speaker, named or numbered in the cast."""
    if isinstance(speaker, int) and 0 <= speaker < max(len(voice.speakers), 1):
        return speaker
    if isinstance(speaker, str) and speaker in voice.speaker_ids:
        return voice.speaker_ids[speaker]
    raise RemoteProtocolError(
        errors.INVALID_CAST,
        f"voice {voice.name!r} has no speaker {speaker!r} (it has {len(voice.speakers)})",
        request_id,
    )


@dataclass(frozen=True)
class RenderedFile:
    data: bytes
    duration: float
    """Seconds."""
    sample_rate: int


async def render_file(engine: Engine, job: SynthesisRequest, file_format: str) -> RenderedFile:
    """A whole line as one encoded file (wav, ogg or flac), at background priority."""
    audio, sample_rate = await engine.render(job)
    data = await asyncio.to_thread(encode_file, audio, file_format, sample_rate)
    return RenderedFile(data, len(audio) / sample_rate, sample_rate)
