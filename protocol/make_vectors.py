"""Regenerate protocol/vectors.json from the Python codec: `python protocol/make_vectors.py`.

The vectors are the contract every binding is tested against, so a change here is a
protocol change: tests/test_vectors.py fails until the file is regenerated and reviewed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dialogue_tts import messages as m
from dialogue_tts.protocol import encode_frame

OUT = Path(__file__).with_name("vectors.json")

REQUESTS: list[tuple[str, m.Request]] = [
    ("hello", m.Hello(protocol=1, client="godot-demo", id=1)),
    ("hello_no_pace", m.Hello(protocol=1, client="renderer", pace=False, id="h")),
    ("say_minimal", m.Say(speaker="guard", text="Halt!")),
    (
        "say_full",
        m.Say(
            id=7,
            speaker="innkeeper",
            text="Welcome back, {b}friend{/b}.{w=0.5} Stew?",
            line="inn-001",
            voice="en_US-joe-medium",
            interrupt=True,
            format="f32le",
            markup="renpy",
            rate=1.25,
            volume=0.8,
        ),
    ),
    ("say_unicode", m.Say(id=8, speaker="café", text="Déjà vu… “again”?", line=42)),
    ("skip", m.Skip(id=9, speaker="guard")),
    ("cancel_int", m.Cancel(id=10, line=3)),
    ("cancel_str", m.Cancel(id=11, line="inn-001")),
    ("clear_all", m.Clear(id=12)),
    ("clear_speaker", m.Clear(id=13, speaker="guard")),
    ("pause_all", m.Pause(id=14)),
    ("resume_speaker", m.Resume(id=15, speaker="guard")),
    ("voices", m.VoicesRequest(id=16)),
    ("status", m.StatusRequest(id=17)),
    ("synthesize", m.Synthesize(id=18, text="Papers, please.", format="ogg")),
    (
        "synthesize_flac",
        m.Synthesize(id=22, text="Papers, please.", speaker="guard", format="flac"),
    ),
    (
        "synthesize_f32le",
        m.Synthesize(id=26, text="Halt!", speaker="guard", format="f32le", sample_rate=44100),
    ),
    ("cast", m.CastRequest(id=23)),
    (
        "hello_cast_lexicon",
        m.Hello(
            protocol=1,
            client="renpy-demo",
            id=4,
            cast={"lexicon": {"Aelindra": "ay-LIN-dra", "Xal'thar": "/zˈælθɑːɹ/"}},
        ),
    ),
    (
        "pronounce",
        m.Pronounce(id=25, speaker="guard", text="Nggh! Aelindra?", lexicon={"Nggh": "ung"}),
    ),
    ("say_timings", m.Say(id=24, speaker="guard", text="Halt!", timings=["word", "viseme"])),
    ("hello_timings", m.Hello(protocol=1, client="lipsync", id=3, timings=["viseme"])),
    (
        "hello_token_cast",
        m.Hello(
            protocol=1,
            client="godot-demo",
            id=2,
            token="s3cret",
            cast={"speakers": {"guard": {"pitch": 0.8, "styles": {"angry": {"rate": 1.2}}}}},
        ),
    ),
    (
        "say_styled",
        m.Say(id=21, speaker="guard", text="Halt!", style="angry", pitch=0.9, sample_rate=48000),
    ),
    ("ping", m.Ping(id=19)),
    ("ping_big_id", m.Ping(id=4_000_000_000)),
    ("ping_negative_id", m.Ping(id=-1)),
    ("bye", m.Bye()),
    ("prepare", m.Prepare(id=20, text="Papers, please.", voice="en_US-joe-medium", rate=1.1)),
    (
        "synthesize_scene",
        m.SynthesizeScene(
            id=24,
            lines=[
                {"speaker": "guard", "text": "Halt!", "style": "angry"},
                {
                    "speaker": "innkeeper",
                    "text": "Easy, friend.",
                    "voice": "en_US-joe-medium",
                    "rate": 0.9,
                    "pitch": 1.1,
                    "pause": 0.5,
                },
            ],
            format="ogg",
            gap=0.3,
        ),
    ),
]

VOICE = {
    "name": "en_US-joe-medium",
    "language": "en_US",
    "sample_rate": 22050,
    "speakers": [],
    "quality": "medium",
}
EVENTS: list[tuple[str, m.Event]] = [
    (
        "welcome",
        m.Welcome(
            id=1,
            protocol=1,
            server="dialogue-tts 0.1.0",
            voices=[VOICE],
            default_voice="en_US-joe-medium",
            max_frame=1048576,
            max_text=5000,
        ),
    ),
    ("queued", m.Queued(id=7, line="inn-001", speaker="innkeeper", position=0)),
    ("queued_server_line", m.Queued(id=3, line=12, speaker="guard", position=2)),
    (
        "started",
        m.Started(
            line=12,
            speaker="guard",
            voice="en_US-joe-medium",
            sample_rate=22050,
            channels=1,
            format="s16le",
        ),
    ),
    ("audio_s16le", m.Audio(line=12, speaker="guard", seq=0, data=bytes([0, 0, 255, 127, 1, 128]))),
    ("audio_empty", m.Audio(line=12, speaker="guard", seq=1, data=b"")),
    (
        "marks",
        m.Marks(
            line=12,
            speaker="guard",
            words=[[0, 5632, 0, 4], [11264, 4864, 6, 9]],
            phonemes=[[0, 1024, "^"], [1024, 768, "h"], [1792, 1536, "ˈɔ"]],
            visemes=[[0, 1024, "sil"], [1024, 2304, "aa"]],
        ),
    ),
    ("audio_long", m.Audio(line=12, speaker="guard", seq=2, data=bytes(range(256)) * 2)),
    (
        "finished_done",
        m.Finished(line=12, speaker="guard", status="done", samples=31488, complete=True),
    ),
    (
        "finished_skipped_complete",
        m.Finished(line=13, speaker="guard", status="skipped", samples=22050, complete=True),
    ),
    (
        "finished_error",
        m.Finished(
            line="x",
            speaker="guard",
            status="error",
            samples=0,
            message="voice 'bad' failed to load",
        ),
    ),
    ("skipped", m.Skipped(id=9, speaker="guard", line=12)),
    ("skipped_nothing", m.Skipped(id=9, speaker="guard", line=None)),
    ("cancelled", m.Cancelled(id=10, line=3)),
    ("cleared", m.Cleared(id=13, speaker="guard", lines=[12, "inn-001"])),
    ("paused", m.Paused(id=14)),
    ("resumed", m.Resumed(id=15, speaker="guard")),
    ("voices", m.VoiceList(id=16, voices=[VOICE])),
    (
        "cast",
        m.CastReport(
            id=23,
            cast={
                "source": "cast.toml",
                "default": {"fallback": True},
                "styles": {},
                "speakers": {"guard": {"pitch": 0.8, "styles": {"angry": {"rate": 1.2}}}},
            },
        ),
    ),
    (
        "pronunciation",
        m.Pronunciation(
            id=25,
            voice="en_US-joe-medium",
            words=[[0, 4, "ˈʌŋ", "ung"], [6, 14, "eɪlˈɪndɹɑː", "ay-LIN-dra"]],
        ),
    ),
    (
        "status",
        m.StatusReport(
            id=17, speakers={"guard": {"current": 12, "queued": [13, 14], "paused": False}}
        ),
    ),
    (
        "audio_file",
        m.AudioFile(id=18, format="wav", data=b"RIFF", duration=1.5, sample_rate=22050),
    ),
    (
        "audio_file_f32le",
        m.AudioFile(
            id=26, format="f32le", data=b"\x00\x00\x80\x3f", duration=1 / 44100, sample_rate=44100
        ),
    ),
    ("pong", m.Pong(id=19)),
    ("error", m.Error(id=7, code="unknown_voice", message="no voice named 'bob'")),
    ("error_no_id", m.Error(code="invalid_frame", message="frame is not valid msgpack")),
    ("prepared", m.Prepared(id=20, duration=1.25)),
    (
        "status_with_cache",
        m.StatusReport(
            id=21, speakers={}, cache={"hits": 3, "misses": 5, "entries": 2, "bytes": 420000}
        ),
    ),
]

# Frames a server must answer with an error (and, where "closes" is true, then close).
BAD_FRAMES: list[dict[str, Any]] = [
    {"name": "not_msgpack", "frame_hex": "00000001c1", "error": "invalid_frame"},
    {"name": "truncated_msgpack", "frame_hex": "0000000282a4", "error": "invalid_frame"},
    {"name": "empty_frame", "frame_hex": "00000000", "error": "invalid_frame"},
    {"name": "not_a_map", "frame_hex": None, "map": [1, "a"], "error": "invalid_message"},
    {"name": "int_keys", "frame_hex": None, "map": {1: "say"}, "error": "invalid_frame"},
    {
        "name": "no_type",
        "frame_hex": None,
        "map": {"id": 5, "speaker": "a"},
        "error": "invalid_message",
        "id": 5,
    },
    {"name": "type_not_string", "frame_hex": None, "map": {"type": 3}, "error": "invalid_message"},
    {
        "name": "unknown_type",
        "frame_hex": None,
        "map": {"type": "dance", "id": 6},
        "error": "unknown_type",
        "id": 6,
    },
    {
        "name": "say_missing_text",
        "frame_hex": None,
        "map": {"type": "say", "id": 7, "speaker": "a"},
        "error": "invalid_field",
        "id": 7,
    },
    {
        "name": "say_text_not_string",
        "frame_hex": None,
        "map": {"type": "say", "id": "s", "speaker": "a", "text": 12},
        "error": "invalid_field",
        "id": "s",
    },
    {
        "name": "say_empty_text",
        "frame_hex": None,
        "map": {"type": "say", "id": 8, "speaker": "a", "text": "  \n"},
        "error": "empty_text",
        "id": 8,
    },
    {
        "name": "say_bad_format",
        "frame_hex": None,
        "map": {"type": "say", "id": 9, "speaker": "a", "text": "hi", "format": "mp3"},
        "error": "invalid_field",
        "id": 9,
    },
    {
        "name": "say_rate_bool",
        "frame_hex": None,
        "map": {"type": "say", "id": 10, "speaker": "a", "text": "hi", "rate": True},
        "error": "invalid_field",
        "id": 10,
    },
    {
        "name": "say_rate_out_of_range",
        "frame_hex": None,
        "map": {"type": "say", "id": 11, "speaker": "a", "text": "hi", "rate": 0},
        "error": "invalid_field",
        "id": 11,
    },
    {
        "name": "cancel_line_float",
        "frame_hex": None,
        "map": {"type": "cancel", "id": 12, "line": 1.5},
        "error": "invalid_field",
        "id": 12,
    },
    {
        "name": "scene_line_out_of_range",
        "frame_hex": None,
        "map": {
            "type": "synthesize_scene",
            "id": 13,
            "lines": [{"speaker": "a", "text": "hi"}, {"speaker": "b", "text": "hi", "pitch": 3.0}],
        },
        "error": "invalid_field",
        "id": 13,
    },
    {
        "name": "hello_wrong_protocol",
        "frame_hex": None,
        "map": {"type": "hello", "id": 1, "protocol": 99, "client": "x"},
        "error": "unsupported_protocol",
        "id": 1,
        "closes": True,
        "before_hello": True,
    },
    {
        "name": "say_before_hello",
        "frame_hex": None,
        "map": {"type": "say", "id": 2, "speaker": "a", "text": "hi"},
        "error": "hello_required",
        "id": 2,
        "before_hello": True,
    },
    {
        "name": "frame_too_large",
        "frame_hex": "00100001",
        "error": "frame_too_large",
        "closes": True,
    },
]


def encode_value(value: Any) -> Any:
    """JSON has no bytes: binary values are written {"$bin": "<hex>"}."""
    if isinstance(value, bytes):
        return {"$bin": value.hex()}
    if isinstance(value, dict):
        return {key: encode_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [encode_value(item) for item in value]
    return value


def build() -> dict[str, Any]:
    import msgpack

    bad = []
    for vector in BAD_FRAMES:
        vector = dict(vector)
        if vector["frame_hex"] is None:
            payload = msgpack.packb(vector.pop("map"), use_bin_type=True)
            vector["frame_hex"] = (len(payload).to_bytes(4, "big") + payload).hex()
        bad.append(vector)

    def entries(pairs: list[tuple[str, m.Message]]) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "frame_hex": encode_frame(message).hex(),
                "message": encode_value(message.to_dict()),
            }
            for name, message in pairs
        ]

    streamed = [REQUESTS[0], *REQUESTS[2:5]]  # hello, then three says
    frames = [encode_frame(message) for _, message in streamed]
    stream = b"".join(frames)
    return {
        "comment": "Generated by protocol/make_vectors.py; see protocol/PROTOCOL.md#test-vectors",
        "protocol": 1,
        "requests": entries(REQUESTS),
        "events": entries(EVENTS),
        "bad_frames": bad,
        "stream": {
            "comment": "Four request frames back to back; split it anywhere and decode the same.",
            "hex": stream.hex(),
            "names": [name for name, _ in streamed],
            "splits": [
                [1],
                [4],
                [5, 6],
                [len(frames[0])],
                [3, len(frames[0]) + 2, len(stream) - 1],
                list(range(1, len(stream)))[::7],
            ],
        },
    }


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")
