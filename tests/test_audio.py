"""Sample formats, gain and files."""

from __future__ import annotations

import io
import wave

import numpy as np
import soundfile

from dialogue_tts.audio import apply_gain, encode_file, encode_stream_chunk, split_samples


def test_gain_clips_instead_of_wrapping() -> None:
    samples = np.array([0.5, -0.5, 0.9, -0.9], dtype=np.float32)
    loud = apply_gain(samples, 4.0)
    pcm = np.frombuffer(encode_stream_chunk(loud, "s16le", 22050), dtype="<i2")
    assert pcm.tolist() == [32767, -32767, 32767, -32767]


def test_stream_formats_round_trip() -> None:
    samples = np.linspace(-1, 1, 101, dtype=np.float32)
    s16 = np.frombuffer(encode_stream_chunk(samples, "s16le", 22050), dtype="<i2")
    f32 = np.frombuffer(encode_stream_chunk(samples, "f32le", 22050), dtype="<f4")
    assert np.allclose(s16 / 32767, samples, atol=1 / 32767)
    assert np.array_equal(f32, samples)
    with wave.open(io.BytesIO(encode_stream_chunk(samples, "wav", 16000))) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getnframes()) == (16000, 1, 101)
        assert wav.readframes(101) == s16.tobytes()


def test_files_decode() -> None:
    samples = (0.3 * np.sin(np.arange(22050) * 2 * np.pi * 220 / 22050)).astype(np.float32)
    for file_format in ("wav", "ogg"):
        decoded, rate = soundfile.read(io.BytesIO(encode_file(samples, file_format, 22050)))
        assert rate == 22050
        assert abs(len(decoded) - len(samples)) < 2048  # Vorbis may pad the last block
        assert np.corrcoef(decoded[:20000], samples[:20000])[0, 1] > 0.99


def test_split_samples() -> None:
    pieces = list(split_samples(np.zeros(10_000, dtype=np.float32), 4096))
    assert [len(piece) for piece in pieces] == [4096, 4096, 1808]
