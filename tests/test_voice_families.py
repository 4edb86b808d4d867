"""The voice-family seam: a second family added as one module (tests/tone_family.py) works
end to end through the real server, beside the real Piper voice."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest
import tone_family
from helpers import ServerThread
from tone_family import LETTER_SAMPLES, SAMPLE_RATE

from dialogue_tts.cast import Cast
from dialogue_tts.client import Client
from dialogue_tts.engine import VoiceCatalog
from dialogue_tts.server import ServerConfig
from dialogue_tts.voices import FAMILIES

TONE_FAMILIES = (*FAMILIES, tone_family.FAMILY)
CAST = {
    "speakers": {
        "beeper": {"voice": "tone:beep", "rate": 2.0},
        "guard": {},  # the default Piper voice
        "ghost": {"voice": "tone:broken", "fallback": True},
    }
}


@pytest.fixture(scope="module")
def tone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tone-voices")
    (folder / "beep.tone").write_text("440")
    (folder / "broken.tone").write_text("220")
    (folder / "stray.onnx").write_bytes(b"no family claims this")
    return folder


@pytest.fixture(scope="module")
def tone_server(tone_dir: Path) -> Iterator[ServerThread]:
    catalog = VoiceCatalog(tone_dir, TONE_FAMILIES)
    server = ServerThread(ServerConfig(port=0, cast=Cast.from_dict(CAST)), catalog=catalog)
    yield server.start()
    server.stop()


@pytest.fixture
async def client(tone_server: ServerThread) -> AsyncIterator[Client]:
    async with await Client.connect(port=tone_server.port, client_name="test") as connected:
        yield connected


def test_the_catalog_asks_every_registered_family(
    tone_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = VoiceCatalog(tone_dir, TONE_FAMILIES)
    assert {"en_US-joe-medium", "tone:beep", "tone:broken"} <= set(catalog.names())
    assert catalog.info("tone:beep").family == "tone"
    assert catalog.info("en_US-joe-medium").family == "piper"
    assert "stray.onnx" in caplog.text  # a model no family knows is reported, not loaded
    only_piper = VoiceCatalog(tone_dir)
    assert "tone:beep" not in only_piper and "tone:beep" in catalog


async def test_a_second_family_speaks_through_the_server(client: Client) -> None:
    voices = {voice["name"]: voice for voice in await client.voices()}
    assert voices["tone:beep"]["family"] == "tone"
    text = "Beep boop."
    line = await client.say("beeper", text, timings=["word", "phoneme"])
    result = await line.wait()
    assert result.finished.status == "done", result.finished.message
    assert result.started is not None and result.started.sample_rate == SAMPLE_RATE
    samples = np.frombuffer(bytes(result.audio), "<i2").astype(np.float32) / 32768
    # The cast's rate 2.0 halves each letter; every letter of the text is one unit.
    letters = len(text)
    assert len(samples) == letters * (LETTER_SAMPLES // 2)
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * SAMPLE_RATE / len(samples) - 440) < 5  # its own tone
    assert 0.3 < np.abs(samples).max() <= 0.55  # the family's gain (0.5), faded edges kept
    words = [word for marks in result.marks for word in marks.words or []]
    assert [text[start:end] for _, _, start, end in words] == ["Beep", "boop"]
    phonemes = [p for marks in result.marks for p in marks.phonemes or []]
    assert "".join(p[2] for p in phonemes) == text.lower()


async def test_families_mix_in_one_conversation(client: Client) -> None:
    beep = await client.say("beeper", "Hello there.")
    guard = await client.say("guard", "Halt!")
    beep_result, guard_result = await beep.wait(), await guard.wait()
    assert beep_result.started is not None and guard_result.started is not None
    assert (beep_result.started.voice, guard_result.started.voice) == (
        "tone:beep",
        "en_US-joe-medium",
    )
    assert guard_result.started.sample_rate == 22050
    assert guard_result.finished.status == beep_result.finished.status == "done"


async def test_a_failing_voice_of_any_family_falls_back(client: Client) -> None:
    result = await (await client.say("ghost", "Boo.")).wait()
    assert result.finished.status == "done"
    assert "broken" in (result.finished.message or "")
    assert result.started is not None and result.started.sample_rate == SAMPLE_RATE
    assert len(result.audio) > 0  # said by the Piper default, at the tone voice's rate


async def test_skipping_aborts_a_second_family_line(client: Client) -> None:
    long_text = " ".join(["A clause of many letters, spoken one by one"] * 40) + "."
    line = await client.say("beeper", long_text)
    async for event in line.events():
        if event.TYPE == "audio":
            await client.skip("beeper")
            break
    result = await line.wait()
    assert result.finished.status == "skipped"
    assert result.finished.samples < len(long_text) * LETTER_SAMPLES // 2
