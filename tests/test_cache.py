"""The disk cache: hits with no inference, LRU eviction, crash safety, unwritable folders."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dialogue_tts import cache as cache_module
from dialogue_tts.cache import DiskCache, LinesInPreparation, line_key
from dialogue_tts.engine import (
    DEFAULT_VOICE_NAME,
    CancelToken,
    Delivery,
    Engine,
    SynthesisRequest,
    VoiceCatalog,
)
from dialogue_tts.text import prepare
from dialogue_tts.timings import PhonemeUnit, Piece, WordUnit
from dialogue_tts.voices.piper import PiperVoice as Voice
from dialogue_tts.voices.piper import valid_duration_curve
from dialogue_tts.workers import Priority

LINE = "The lanterns are lit, and the road is clear."


def pieces(*lengths: int) -> list[Piece]:
    rng = np.random.default_rng(sum(lengths))
    return [Piece(rng.uniform(-1, 1, n).astype(np.float32)) for n in lengths]


def test_entries_round_trip_and_are_addressed_by_content(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = line_key("voice-digest", {"rate": 1.0}, ["Hello."])
    assert key != line_key("voice-digest", {"rate": 1.1}, ["Hello."])
    assert key != line_key("other-voice", {"rate": 1.0}, ["Hello."])
    assert cache.get(key) is None
    stored = pieces(300, 0, 1000)
    cache.put(key, stored)
    loaded = cache.get(key)
    assert loaded is not None and [len(p.audio) for p in loaded] == [300, 0, 1000]
    assert all(np.array_equal(a.audio, b.audio) for a, b in zip(loaded, stored, strict=True))
    counters = cache.counters()
    assert (counters["hits"], counters["misses"], counters["writes"]) == (1, 1, 1)
    assert counters["entries"] == 1 and counters["bytes"] > 1300 * 4
    assert DiskCache(tmp_path).counters()["entries"] == 1  # a new process finds it


def test_timings_are_kept_with_the_audio(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    timed = Piece(
        np.zeros(512, np.float32), (PhonemeUnit("h", 0, 256), PhonemeUnit("ə", 256, 256)),
        (WordUnit(3, 8, 0, 512),),
    )  # fmt: skip
    cache.put("k" * 64, [timed, Piece(np.zeros(100, np.float32))])
    loaded = cache.get("k" * 64)
    assert loaded is not None and loaded[0].phonemes == timed.phonemes
    assert loaded[0].words == timed.words and loaded[1].phonemes == ()


def test_least_recently_used_entries_are_evicted(tmp_path: Path) -> None:
    entry = len(cache_module._encode(pieces(1000)))
    cache = DiskCache(tmp_path, max_bytes=3 * entry + 100)
    keys = [line_key("v", {}, [f"line {n}"]) for n in range(4)]
    for age, key in enumerate(keys[:3]):
        cache.put(key, pieces(1000))
        stamp = time.time() - 100 + age  # oldest first, whatever the clock's resolution
        os.utime(cache._path(key), (stamp, stamp))
    assert cache.get(keys[0]) is not None  # now the most recently used
    cache.put(keys[3], pieces(1000))
    assert cache.counters()["bytes"] <= cache.max_bytes
    assert cache.get(keys[1]) is None  # the least recently used went first
    assert cache.get(keys[0]) is not None and cache.get(keys[3]) is not None


def test_a_damaged_entry_is_deleted_not_served(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    key = line_key("v", {}, ["x"])
    cache.put(key, pieces(500))
    path = cache._path(key)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    assert cache.get(key) is None and not path.exists()
    cache.put(key, pieces(500))
    path.write_bytes(path.read_bytes()[:-400])  # truncated
    assert cache.get(key) is None and not path.exists()


def test_a_writer_killed_mid_write_leaves_no_entry(tmp_path: Path) -> None:
    """Kill -9 a process in the middle of writing an entry: nothing half-written is served."""
    key = line_key("v", {}, ["killed"])
    writer = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        from pathlib import Path
        from dialogue_tts import cache
        from dialogue_tts.timings import Piece

        def slow(file, data):
            file.write(data[: len(data) // 2])
            file.flush()
            print("half", flush=True)
            time.sleep(60)

        cache._write_all = slow
        cache.DiskCache(Path({str(tmp_path)!r})).put({key!r}, [Piece(np.zeros(100000, np.float32))])
    """)
    process = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "half\n"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    temps = list(tmp_path.glob("*/.tmp-*"))
    assert len(temps) == 1 and temps[0].stat().st_size > 0  # the half-written file
    cache = DiskCache(tmp_path)
    assert cache.get(key) is None and cache.counters()["entries"] == 0
    old = time.time() - 2 * cache_module._STALE_TEMP_SECONDS
    os.utime(temps[0], (old, old))
    DiskCache(tmp_path)  # a later start clears temp files of dead writers
    assert not temps[0].exists()


# --- with the engine --------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> VoiceCatalog:
    return VoiceCatalog()


def request(text: str = LINE, **delivery: Any) -> SynthesisRequest:
    return SynthesisRequest(
        prepare(text, "plain", "en_US"), DEFAULT_VOICE_NAME, Delivery(**delivery)
    )


async def stream_all(engine: Engine, job: SynthesisRequest) -> list[np.ndarray]:
    return [piece.audio async for piece in engine.stream(job, CancelToken())]


@pytest.fixture
def engines(catalog: VoiceCatalog, tmp_path: Path) -> Iterator[list[Engine]]:
    made: list[Engine] = []
    yield made
    for engine in made:
        engine.close()


async def test_a_cached_line_streams_with_no_inference(
    catalog: VoiceCatalog, tmp_path: Path, engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Engine(catalog, disk_cache=DiskCache(tmp_path / "cache"))
    engines.append(first)
    made = await stream_all(first, request())
    await first.finish_cache_writes()
    assert first.cache_counters()["disk"]["writes"] == 1
    # A fresh engine (another run of the game) on the same folder, whose model may not run:
    second = Engine(catalog, disk_cache=DiskCache(tmp_path / "cache"))
    engines.append(second)
    voice = await second.voice()

    def no_inference(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached line ran the model")

    monkeypatch.setattr(voice, "infer", no_inference)
    monkeypatch.setattr(voice, "first_piece", no_inference)
    replayed = await stream_all(second, request())
    assert np.array_equal(np.concatenate(replayed), np.concatenate(made))
    assert second.cache_counters()["disk"]["hits"] == 1
    with pytest.raises(AssertionError, match="ran the model"):  # other settings: not cached
        await stream_all(second, request(rate=1.3))


async def test_an_unwritable_or_full_cache_folder_never_fails_a_line(
    catalog: VoiceCatalog, tmp_path: Path, engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tests run as root, where permissions do not stop writes: a folder that cannot
    # be created (its parent is a file) stands in for a read-only one.
    (tmp_path / "file").write_text("not a folder")
    unwritable = Engine(catalog, disk_cache=DiskCache(tmp_path / "file" / "cache"))
    engines.append(unwritable)
    assert len(np.concatenate(await stream_all(unwritable, request()))) > 10000
    await unwritable.finish_cache_writes()
    assert unwritable.cache_counters()["disk"]["write_errors"] >= 1

    def disk_full(file: Any, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_module, "_write_all", disk_full)
    full = Engine(catalog, disk_cache=DiskCache(tmp_path / "full"))
    engines.append(full)
    assert len(np.concatenate(await stream_all(full, request()))) > 10000
    await full.finish_cache_writes()
    counters = full.cache_counters()["disk"]
    assert counters["write_errors"] == 1 and counters["entries"] == 0
    assert not list((tmp_path / "full").glob("*/.tmp-*"))  # no litter left behind


async def test_a_voice_is_calibrated_once_per_cache_folder(
    catalog: VoiceCatalog, tmp_path: Path, engines: list[Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Warm-up's rate calibration (five passes over the warm-up text) is kept in the disk
    cache: the next start on the same folder runs one pass, with the same curve; a damaged
    record is measured again and replaced."""
    passes: list[float] = []
    run = Voice._run

    def counted(self: Voice, ids: list[int], length_scale: float, *args: Any) -> Any:
        passes.append(length_scale)
        return run(self, ids, length_scale, *args)

    monkeypatch.setattr(Voice, "_run", counted)

    async def start() -> tuple[Voice, list[float]]:
        passes.clear()
        engine = Engine(catalog, disk_cache=DiskCache(tmp_path / "cache"))
        engines.append(engine)
        return await engine.voice(), sorted(set(passes))

    first, measured = await start()
    assert measured == [0.5, 0.75, 1.0, 1.5, 2.0]  # every calibration factor ran
    [record] = (tmp_path / "cache" / "records").glob("calibration-*.json")
    second, measured = await start()
    assert measured == [1.0]  # the warm-up pass only
    assert second.duration_curve == first.duration_curve
    assert second.length_scale(1.4) == first.length_scale(1.4)
    assert second.fixed_duration == first.fixed_duration
    record.write_text("[1.0, 0.5]")  # damaged: not a curve
    third, measured = await start()
    assert measured == [0.5, 0.75, 1.0, 1.5, 2.0]
    assert third.duration_curve == first.duration_curve  # noise off: the same measure
    assert valid_duration_curve(json.loads(record.read_text()))


def test_only_a_measured_shape_counts_as_a_duration_curve() -> None:
    assert valid_duration_curve([0.61, 0.8, 1.0, 1.35, 1.7])
    for bad in (None, "x", [0.61, 0.8, 1.0, 1.35], [0.61, 0.8, 1.1, 1.35, 1.7],
                [0.9, 0.8, 1.0, 1.35, 1.7], [0.61, 0.8, 1.0, 1.35, float("nan")],
                [0, 0.8, 1.0, 1.35, 1.7], [0.61, 0.8, True, 1.35, 1.7]):  # fmt: skip
        assert not valid_duration_curve(bad), bad


# --- Lines being prepared -----------------------------------------------------------------


async def test_a_followed_preparation_is_as_urgent_as_its_most_urgent_follower() -> None:
    lines = LinesInPreparation()
    background = lambda: (Priority.BACKGROUND, 0.0)  # noqa: E731
    async with lines.start("line", background, words=False) as preparation:
        assert lines.get("line", words=True) is None  # its pieces carry no word timings
        assert lines.get("other", words=False) is None
        assert preparation.priority() == (Priority.BACKGROUND, 0.0)
        joined = lines.get("line", words=False)
        assert joined is preparation
        follower = joined.follow(lambda: (Priority.FIRST, 5.0))
        preparation.add(Piece(np.ones(3, np.float32)))
        assert len((await anext(follower)).audio) == 3
        assert preparation.priority() == (Priority.FIRST, 5.0)
        waiting = asyncio.create_task(anext(follower))
        await asyncio.sleep(0)
        assert not waiting.done()  # no piece yet: it waits for the next one
        preparation.add(Piece(np.zeros(2, np.float32)))
        assert len((await waiting).audio) == 2
        await follower.aclose()
        assert preparation.priority() == (Priority.BACKGROUND, 0.0)  # nobody follows now
    assert preparation.done and not preparation.failed and len(lines) == 0
    assert lines.joined == 1


async def test_a_preparation_that_fails_ends_its_followers() -> None:
    lines = LinesInPreparation()
    with pytest.raises(RuntimeError):
        async with lines.start("line", lambda: (Priority.BACKGROUND, 0.0), words=True) as made:
            follower = asyncio.create_task(
                asyncio.wait_for(_collect(made.follow(lambda: (Priority.FIRST, 0.0))), 30)
            )
            made.add(Piece(np.ones(1, np.float32)))
            await asyncio.sleep(0)
            raise RuntimeError("its client left")
    assert len(await follower) == 1 and made.failed and len(lines) == 0


async def _collect(pieces: AsyncIterator[Piece]) -> list[Piece]:
    return [piece async for piece in pieces]
