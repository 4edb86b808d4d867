"""The command line, run as a newcomer would."""

from __future__ import annotations

from pathlib import Path

import soundfile
from helpers import run_command as run
from helpers import server_process


def test_say_in_process_writes_a_wav(tmp_path: Path) -> None:
    out = tmp_path / "hello.wav"
    result = run("say", "Hello there, traveler.", "-o", str(out), "--local")
    assert result.returncode == 0, result.stderr
    assert "in-process" in result.stdout
    audio, rate = soundfile.read(out)
    assert rate == 22050 and 0.8 < len(audio) / rate < 4


def test_voices_and_errors() -> None:
    listed = run("voices", "--local")
    assert listed.returncode == 0 and "en_US-joe-medium" in listed.stdout
    unknown = run("say", "Hi.", "--voice", "nobody", "-o", "/dev/null", "--local")
    assert unknown.returncode == 1 and "no voice named 'nobody'" in unknown.stderr
    remote = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert remote.returncode == 1 and "not a loopback address" in remote.stderr


def test_say_through_a_running_server(tmp_path: Path) -> None:
    with server_process() as (port, _process):
        out = tmp_path / "line.ogg"
        result = run("say", "Papers, please.", "-o", str(out), "--port", str(port))
        assert result.returncode == 0, result.stderr
        assert "from the running server" in result.stdout
        audio, rate = soundfile.read(out)
        assert rate == 22050 and len(audio) > rate / 2
        listed = run("voices", "--port", str(port))
        assert "en_US-joe-medium" in listed.stdout


def test_a_server_with_a_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("tea-and-biscuits\n")
    with server_process("--token-file", str(token_file)) as (port, _process):
        out = tmp_path / "line.flac"
        refused = run("say", "Papers, please.", "-o", str(out), "--port", str(port))
        assert refused.returncode == 1 and "unauthorized" in refused.stderr
        assert not out.exists()  # no quiet in-process render behind the refusal
        by_env = run("say", "Papers, please.", "-o", str(out), "--port", str(port),
                     env={"DIALOGUE_TTS_TOKEN": "tea-and-biscuits"})  # fmt: skip
        assert by_env.returncode == 0 and "from the running server" in by_env.stdout
        assert soundfile.info(str(out)).format == "FLAC"
        by_file = run("voices", "--port", str(port), "--token-file", str(token_file))
        assert by_file.returncode == 0 and "en_US-joe-medium" in by_file.stdout
