"""Sample conversion for the wire: gain, clipping, PCM formats, WAV and OGG files."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from typing import Final

import numpy as np
import soundfile
import soxr

__all__ = [
    "DEFAULT_CHUNK_SAMPLES",
    "FILE_FORMATS",
    "RAW_FORMATS",
    "apply_gain",
    "encode_file",
    "encode_stream_chunk",
    "fade_edges",
    "resample",
    "shift_pitch",
    "split_samples",
    "wav_bytes",
]

DEFAULT_CHUNK_SAMPLES: Final = 4096
"""Samples per audio event (~0.19 s at 22.05 kHz): small enough that a client's buffer
holds little when a line is skipped, large enough that framing costs nothing."""
FADE_SAMPLES: Final = 64
"""~3 ms at 22.05 kHz: short enough to be inaudible, long enough that no join clicks."""
_INT16_MAX: Final = 32767


def apply_gain(samples: np.ndarray, gain: float) -> np.ndarray:
    """Scale float samples and clip them to [-1, 1], so loud settings saturate, never wrap."""
    if gain != 1.0:
        samples = samples * np.float32(gain)
    return np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


def fade_edges(samples: np.ndarray, length: int = FADE_SAMPLES) -> np.ndarray:
    """Ramp the first and last ``length`` samples, so pieces join with no click."""
    length = min(length, len(samples) // 2)
    if length == 0:
        return samples
    ramp = np.linspace(0.0, 1.0, length, endpoint=False, dtype=np.float32)
    samples = samples.copy()
    samples[:length] *= ramp
    samples[-length:] *= ramp[::-1]
    return samples


def shift_pitch(samples: np.ndarray, factor: float, sample_rate: int) -> np.ndarray:
    """Raise the pitch by ``factor`` (below 1 lowers it); the audio gets ``factor`` times shorter.

    Plays the samples as if recorded at ``sample_rate * factor``: resampling them back to
    ``sample_rate`` moves every frequency by ``factor``. soxr does this with a proper
    anti-aliasing filter, which linear interpolation in numpy does not.
    """
    return resample(samples, sample_rate * factor, sample_rate)


def resample(samples: np.ndarray, from_rate: float, to_rate: float) -> np.ndarray:
    """Float32 ``samples`` converted from one sample rate to another (soxr, high quality)."""
    if from_rate == to_rate or not len(samples):
        return samples
    return np.asarray(soxr.resample(samples, from_rate, to_rate), dtype=np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.round(np.clip(samples, -1.0, 1.0) * _INT16_MAX).astype("<i2")


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete mono 16-bit WAV file (44-byte header, then PCM)."""
    pcm = to_int16(samples).tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF", 36 + len(pcm), b"WAVE",
        b"fmt ", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16,
        b"data", len(pcm),
    )  # fmt: skip
    return header + pcm


def encode_stream_chunk(samples: np.ndarray, stream_format: str, sample_rate: int) -> bytes:
    """Encode float samples for an audio event in the line's stream format."""
    if stream_format == "s16le":
        return to_int16(samples).tobytes()
    if stream_format == "f32le":
        return samples.astype("<f4", copy=False).tobytes()
    if stream_format == "wav":
        return wav_bytes(samples, sample_rate)
    raise ValueError(f"unknown stream format {stream_format!r}")


FILE_FORMATS: Final = {
    "wav": ("WAV", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "flac": ("FLAC", "PCM_16"),
}
"""File format name -> soundfile's (format, subtype)."""


RAW_FORMATS: Final = ("f32le", "s16le")
"""Whole-line formats without a header: the samples exactly as a stream's chunks carry them."""


def encode_file(samples: np.ndarray, file_format: str, sample_rate: int) -> bytes:
    """A whole line as one file: "wav" (16-bit PCM), "ogg" (Vorbis) or "flac" (16-bit); or
    raw mono samples, "f32le" or "s16le", byte for byte what a say's audio events carry."""
    if file_format == "wav":
        return wav_bytes(samples, sample_rate)  # our own header: byte-exact and fast
    if file_format in RAW_FORMATS:
        return encode_stream_chunk(samples, file_format, sample_rate)
    try:
        container, subtype = FILE_FORMATS[file_format]
    except KeyError:
        raise ValueError(f"unknown file format {file_format!r}") from None
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def split_samples(samples: np.ndarray, size: int = DEFAULT_CHUNK_SAMPLES) -> Iterator[np.ndarray]:
    """Consecutive slices of at most ``size`` samples."""
    for start in range(0, len(samples), size):
        yield samples[start : start + size]
