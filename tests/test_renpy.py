"""The Ren'Py binding; the renpy-render command is tested in test_renpy_render.py.

(a) the binding's own msgpack codec and frame reader against protocol/vectors.json;
(b) its client against a real server, also one started with a token (accepted with it,
refused once and never retried without it) with a cast, styles and pitch; (c) with Ren'Py
installed (/usr/games/renpy, Debian's 8.0.3), the example game played headless against a real
server with a token through a recording proxy, refused with a wrong token, and lint; (d) the
lookahead: its script walk on stand-in nodes, its prepares against a fake connection, and in
Ren'Py the example played with it, and a scene with a menu and a rollback at the fastest
auto-forward (tests/data/renpy_harness).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import soundfile
from helpers import (
    REPO,
    VECTORS,
    ServerThread,
    from_json,
    load_renpy_client,
    needs_engine,
    run_command,
    server_process,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from dialogue_tts.cast import Cast
from dialogue_tts.client import Client
from dialogue_tts.server import ServerConfig

BINDING = REPO / "integrations" / "renpy" / "game" / "dialogue_tts"
EXAMPLE = REPO / "examples" / "renpy"
RENPY = Path("/usr/games/renpy")


client = load_renpy_client()


def _same(decoded: Any, expected: Any) -> bool:
    """Equal, with ints and floats kept apart (JSON has one number type)."""
    if isinstance(expected, dict):
        return (
            isinstance(decoded, dict)
            and list(decoded) == list(expected)
            and all(_same(decoded[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list):
        return (
            isinstance(decoded, list)
            and len(decoded) == len(expected)
            and all(_same(d, e) for d, e in zip(decoded, expected, strict=True))
        )
    return type(decoded) is type(expected) and decoded == expected


# --- (a) the codec ----------------------------------------------------------------------------

MESSAGE_VECTORS = VECTORS["requests"] + VECTORS["events"]
FLOAT_FIELDS = {"rate", "pitch", "volume", "duration", "gap", "pause"}


def _typed(message: dict[str, Any]) -> dict[str, Any]:
    """JSON wrote float fields like 1.0 as floats already; make sure they are floats."""
    return {k: float(v) if k in FLOAT_FIELDS else v for k, v in message.items()}


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=lambda v: v["name"])
def test_codec_decodes_vector(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["frame_hex"])
    expected = _typed(from_json(vector["message"]))
    assert struct.unpack(">I", frame[:4])[0] == len(frame) - 4
    assert _same(client.unpackb(frame[4:]), expected)
    assert _same(client.FrameReader().feed(frame), [expected])


@pytest.mark.parametrize("vector", MESSAGE_VECTORS, ids=lambda v: v["name"])
def test_codec_encodes_vector(vector: dict[str, Any]) -> None:
    message = _typed(from_json(vector["message"]))
    assert client.encode_frame(message).hex() == vector["frame_hex"]


@pytest.mark.parametrize("split", VECTORS["stream"]["splits"], ids=str)
def test_frame_reader_splits(split: list[int]) -> None:
    stream = bytes.fromhex(VECTORS["stream"]["hex"])
    by_name = {vector["name"]: vector for vector in VECTORS["requests"]}
    whole = client.FrameReader().feed(stream)
    expected = [_typed(from_json(by_name[n]["message"])) for n in VECTORS["stream"]["names"]]
    assert _same(whole, expected)
    reader = client.FrameReader()
    pieces = []
    for start, end in zip([0, *split], [*split, len(stream)], strict=True):
        pieces += reader.feed(stream[start:end])
    assert pieces == whole


def test_frame_reader_byte_by_byte() -> None:
    stream = bytes.fromhex(VECTORS["stream"]["hex"])
    reader = client.FrameReader()
    messages = [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])]
    assert messages == client.FrameReader().feed(stream)


# Frames the reader itself must refuse (the other bad frames are well-formed maps that only
# a server rejects, for their fields).
UNREADABLE = {
    "not_msgpack", "truncated_msgpack", "empty_frame", "not_a_map", "int_keys", "no_type",
    "type_not_string", "frame_too_large",
}  # fmt: skip


@pytest.mark.parametrize("vector", VECTORS["bad_frames"], ids=lambda v: v["name"])
def test_frame_reader_bad_frames(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["frame_hex"])
    reader = client.FrameReader(max_frame=1024 * 1024)
    if vector["name"] in UNREADABLE:
        with pytest.raises(client.ProtocolError):
            reader.feed(frame)
    else:
        [message] = reader.feed(frame)
        assert isinstance(message["type"], str)


def test_codec_edge_values() -> None:
    for value in [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
                  -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
                  "", "a" * 31, "a" * 32, "a" * 255, "a" * 256, "é" * 40000,
                  b"", b"x" * 255, b"x" * 256, b"x" * 70000,
                  [], list(range(15)), list(range(16)), list(range(70000)),
                  {}, {str(i): i for i in range(16)}, 1.5, -0.0, None, True, False]:  # fmt: skip
        packed = client.packb(value)
        assert packed == msgpack.packb(value, use_bin_type=True), value
        assert client.unpackb(packed) == value
    for bad in (2**64, -(2**63) - 1, {1: 2}, object()):
        with pytest.raises((TypeError, OverflowError)):
            client.packb(bad)
    with pytest.raises(client.ProtocolError):
        client.unpackb(b"\x91")  # an array of one, with nothing in it
    with pytest.raises(client.ProtocolError):
        client.unpackb(b"\xc0\xc0")  # two values
    with pytest.raises(client.ProtocolError):
        client.unpackb(b"\xc1")  # never used
    assert client.unpackb(b"\xca\x3f\xc0\x00\x00") == 1.5  # float32


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(values)
def test_codec_matches_msgpack(value: Any) -> None:
    packed = client.packb(value)
    assert packed == msgpack.packb(value, use_bin_type=True)
    assert client.unpackb(packed) == value


def test_au_bytes() -> None:
    pcm = np.array([0, 1, -2, 32767, -32768], dtype="<i2").tobytes()
    au = client.au_bytes(pcm, 22050)
    assert au[:4] == b".snd"
    assert struct.unpack(">IIIII", au[4:24]) == (24, 10, 3, 22050, 1)
    assert np.frombuffer(au[24:], dtype=">i2").tolist() == [0, 1, -2, 32767, -32768]


def test_connection_refuses_remote_hosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        client.Connection("192.0.2.1", 5757)
    client.Connection("localhost", 5757)  # loopback names are fine
    client.Connection("::1", 5757)


# --- revealing text in time with the voice (pure) ------------------------------------------------

LINE = "{b}Halt!{/b} {w=0.5}Who goes {color=#f00}there{/color}, {i}stranger{/i}?"
# [start, length, start_char, end_char], as the server sends them for LINE.
LINE_WORDS = [
    [start, length, LINE.index(word), LINE.index(word) + len(word)]
    for start, length, word in [(1280, 6144, "Halt"), (18000, 3000, "Who"), (21000, 2800, "goes"),
                                (23800, 4000, "there"), (30000, 7000, "stranger")]
]  # fmt: skip


def test_revealed_length_follows_the_words_and_their_punctuation() -> None:
    said = [LINE[: client.revealed_length(LINE, LINE_WORDS, position)]
            for position in (0, 1279, 1280, 17999, 18000, 23800, 36999)]  # fmt: skip
    assert said == [
        "",
        "",
        "{b}Halt!{/b}",  # the word, then its "!" and the tag that closes it
        "{b}Halt!{/b}",
        "{b}Halt!{/b} {w=0.5}Who",
        "{b}Halt!{/b} {w=0.5}Who goes {color=#f00}there{/color},",
        "{b}Halt!{/b} {w=0.5}Who goes {color=#f00}there{/color}, {i}stranger{/i}?",
    ]
    # Past the last word: all of it, but only once every mark has arrived.
    assert client.revealed_length(LINE, LINE_WORDS, 37000, complete=False) == len(LINE)
    assert client.revealed_length("Go home.", [[0, 10, 0, 2]], 11, complete=False) == 2
    assert client.revealed_length("Go home.", [[0, 10, 0, 2]], 11) == len("Go home.")
    # One written word read as several ("250") shares its span; words run together share one.
    words = [[0, 5, 8, 11], [5, 5, 8, 11], [10, 5, 8, 11], [15, 5, 12, 16]]
    assert client.revealed_length("I owe you 250 gold.", words, 12) == 11
    assert client.revealed_length("", [], 100) == 0


def test_hide_after_keeps_layout_and_nesting() -> None:
    text = "{b}Halt!{/b} Who goes {color=#f00}there{/color}, {a=jump:x}friend{/a}?"
    H, U = client.HIDE, client.UNHIDE
    assert (H, U) == ("{alpha=0}{outlinecolor=#0000}", "{/outlinecolor}{/alpha}")
    assert client.hide_after(text, len(text)) == text
    # Every tag stays (the same layout); each that opens in the hidden part hides its text
    # again, since color and hyperlink (a whole style) tags would show it.
    assert client.hide_after(text, 0) == (
        f"{H}{{b}}{H}Halt!{U}{{/b}} Who goes {{color=#f00}}{H}there{U}{{/color}}, "
        f"{{a=jump:x}}{H}friend{U}{{/a}}?{U}"
    )
    # Open tags are closed where the visible part ends and opened again in the hidden part.
    assert client.hide_after(text, 5) == (
        f"{{b}}Ha{{/b}}{H}{{b}}{H}lt!{U}{{/b}} Who goes {{color=#f00}}{H}there{U}{{/color}}, "
        f"{{a=jump:x}}{H}friend{U}{{/a}}?{U}"
    )
    assert client.hide_after(text, text.index("there") + 2) == (
        f"{{b}}Halt!{{/b}} Who goes {{color=#f00}}th{{/color}}{H}{{color=#f00}}{H}ere{U}"
        f"{{/color}}, {{a=jump:x}}{H}friend{U}{{/a}}?{U}"
    )
    # A position inside a tag moves past it; {{ is a literal brace; self-closing tags and
    # comments open nothing (custom self-closing tags are given).
    assert client.hide_after("{b}x{/b}", 1).startswith("{b}{/b}{alpha=0}")
    assert client.hide_after("{{a} {p}b {#note}c", 9) == f"{{{{a}} {{p}}b{H} {{#note}}c{U}"
    assert client.hide_after("{beep}x y", 8, self_closing={"beep"}) == f"{{beep}}x {H}y{U}"
    # A style tag ({=name}), and ruby, whose {rt} applies a whole style: hidden too.
    assert client.hide_after("{=emph}Go{/=emph} {rb}東京{/rb}{rt}とうきょう{/rt}", 9) == (
        f"{{=emph}}Go{{/=emph}}{H}{{=emph}}{H}{U}{{/=emph}} {{rb}}{H}東京{U}{{/rb}}"
        f"{{rt}}{H}とうきょう{U}{{/rt}}{U}"
    )


_TAGGED = re.compile(r"\{\{|\{([^{}]*)\}")


def _plain(markup: str) -> str:
    """The characters Ren'Py lays out: tags removed, {{ as one brace."""
    return _TAGGED.sub(lambda m: "{" if m.group(0) == "{{" else "", markup)


def _nesting_error(markup: str) -> str | None:
    """renpy.text.extras.check_text_tags, for the tags used here."""
    stack: list[str] = []
    for match in _TAGGED.finditer(markup):
        tag = match.group(1)
        if not tag or tag.startswith("#"):
            continue
        name = tag.partition("=")[0]
        if name.startswith("/"):
            if not stack or stack.pop() != name[1:]:
                return f"{{{name}}} does not close the open tag"
        elif name not in client.SELF_CLOSING_TAGS:
            stack.append(name)
    return f"left open: {stack}" if stack else None


def _markup(pieces: list[Any]) -> str:
    """Ren'Py text from words, punctuation and properly nested tags."""
    out = []
    for piece in pieces:
        if isinstance(piece, tuple):
            tag, inner = piece
            out.append(f"{{{tag}}}{_markup(inner)}{{/{tag.partition('=')[0]}}}")
        else:
            out.append(piece)
    return "".join(out)


_pieces = st.recursive(
    st.sampled_from(["Halt", "who", " ", ", ", "!", "{{", "{w=0.5}", "{p}", "250", "é"]),
    lambda inner: st.tuples(
        st.sampled_from(["b", "i", "color=#f00", "alpha=0.5", "size=+4", "a=jump:x", "=emph"]),
        st.lists(inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_pieces, max_size=8), st.integers(0, 200))
def test_hide_after_nests_and_lays_out_the_same_text(pieces: list[Any], shown: int) -> None:
    text = _markup(pieces)
    assert _nesting_error(text) is None
    hidden = client.hide_after(text, shown)
    assert _nesting_error(hidden) is None, hidden
    assert _plain(hidden) == _plain(text)  # the same characters are laid out
    end = shown  # where the visible part ends: moved out of a tag
    for match in _TAGGED.finditer(text):
        if match.start() < end < match.end():
            end = match.end()
    if end >= len(text):
        assert hidden == text
        return
    visible, _, invisible = hidden.partition(client.HIDE)
    assert visible.startswith(text[:end])
    assert re.fullmatch(r"(\{/=?[a-z]+\})*", visible[end:])  # then only closing tags
    # Every character of the hidden part is laid out transparent: the tag around it is the
    # {outlinecolor=#0000} of HIDE, inside its {alpha=0}, whatever tags enclose those.
    stack = ["alpha=0", "outlinecolor=#0000"]
    for token in re.findall(r"\{\{|\{[^{}]*\}|[^{]", invisible):
        if token.startswith("{/"):
            stack.pop()
        elif token.startswith("{") and token != "{{":
            name = token[1:-1]
            if not name.startswith("#") and name.partition("=")[0] not in client.SELF_CLOSING_TAGS:
                stack.append(name)
        else:
            assert stack[-2:] == ["alpha=0", "outlinecolor=#0000"], (token, invisible)
    assert stack == []


class FakeConnection:
    """Stands in for Connection: records what is sent, hands out queued events."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.closed = False
        self.welcome: dict[str, Any] | None = {"type": "welcome"}
        self.host, self.port = "127.0.0.1", 0
        self.arrivals: list[list[dict[str, Any]]] = []
        self.waits = 0

    def send(self, message: dict[str, Any]) -> bool:
        self.sent.append(message)
        return True

    def poll(self) -> list[dict[str, Any]]:
        events, self.events = self.events, []
        return events

    def wait(self, timeout: float) -> bool:
        """Each call delivers the next batch of ``arrivals`` (none left: a wait that timed
        out)."""
        self.waits += 1
        if self.arrivals:
            self.events += self.arrivals.pop(0)
        return bool(self.events)

    def close(self) -> None:
        self.closed = True


def _pcm(samples: int) -> bytes:
    return bytes(2 * samples)


def test_speech_reveals_as_the_voice_plays() -> None:
    fake = FakeConnection()
    speech = client.Speech(lambda: fake, log=lambda message: None)
    assert speech.say("eileen", LINE, reveal=True) == "sent"
    [request] = fake.sent
    assert request["timings"] == ["word"]
    line, rate = request["line"], 22050
    name = lambda seq: client.chunk_filename(line, seq)  # noqa: E731
    assert speech.reveal(LINE) == 0  # nothing said yet: all of it held back
    assert speech.reveal("Another line.") is None  # not this line's text: shown as usual
    fake.events = [
        {"type": "queued", "id": request["id"], "line": line, "speaker": "eileen"},
        {"type": "started", "line": line, "speaker": "eileen", "sample_rate": rate},
        {"type": "marks", "line": line, "speaker": "eileen", "words": LINE_WORDS[:3]},
        {"type": "audio", "line": line, "speaker": "eileen", "seq": 0, "data": _pcm(20000)},
    ]
    [first] = speech.poll()
    assert (first.line, first.seq) == (line, 0)
    assert speech.reveal(LINE) == 0  # handed to the channel, not playing yet
    assert speech.reveal(LINE, name(0), 1000 / rate) == 0
    assert speech.reveal(LINE, name(0), 2000 / rate) == len("{b}Halt!{/b}")
    # Look again when the voice reaches the next word ("Who", at 18000), a tenth of a second
    # at most, a fiftieth at least.
    assert speech.reveal_wait(name(0), 17000 / rate) == pytest.approx(1000 / rate)
    assert speech.reveal_wait(name(0), 2000 / rate) == client.REVEAL_WAIT[1]
    assert speech.reveal_wait(name(0), 17990 / rate) == client.REVEAL_WAIT[0]
    assert speech.reveal(LINE, name(0), 1000 / rate) == len("{b}Halt!{/b}")  # never back
    fake.events = [
        {"type": "marks", "line": line, "speaker": "eileen", "words": LINE_WORDS[3:]},
        {"type": "audio", "line": line, "speaker": "eileen", "seq": 1, "data": _pcm(20000)},
    ]
    [second] = speech.poll()
    assert second.seq == 1 and not second.first
    # The second chunk starts at sample 20000. get_pos gives None at a file's very start
    # (and before the device starts it): that is sample 20000, just past "Who".
    assert speech.reveal(LINE, name(1), None) == len("{b}Halt!{/b} {w=0.5}Who")
    # 4000 samples into it is sample 24000.
    assert speech.reveal(LINE, name(1), 4000 / rate) == LINE.index(" {i}")
    # Past the last word, but the line may go on: its last mark is not known for sure yet.
    assert speech.reveal(LINE, name(1), 17500 / rate) == LINE.index("?") + 1
    fake.events = [{"type": "finished", "line": line, "speaker": "eileen", "status": "done",
                    "samples": 40000, "complete": True}]  # fmt: skip
    speech.poll()
    assert speech.reveal(LINE, name(1), 17500 / rate) == len(LINE)
    # What the screen shows around the line (a what_prefix, a what_suffix) is shown too.
    quoted = f"“{LINE}”"
    assert speech.reveal(quoted, name(1), 17500 / rate) == len(quoted)
    assert speech.reveal(LINE) is None  # the voice has played and stopped
    # Said again (a rollback, a replay): from the cache, with its marks.
    assert speech.say("eileen", LINE, reveal=True) == "cached"
    [replay] = speech.poll()
    assert speech.reveal(LINE, client.chunk_filename(replay.line, 0), 2000 / rate) == 12
    speech.skip()
    assert speech.reveal(LINE, client.chunk_filename(replay.line, 0), 2000 / rate) is None


def test_a_line_moved_past_after_all_its_audio_came_is_cached() -> None:
    """The player moves on while a line plays: the next say stops it, and the server's
    finished (skipped, "complete") comes after. All of its audio had been sent, so the line
    is kept for a rollback; a line cut before its end is not."""
    fake = FakeConnection()
    speech = client.Speech(lambda: fake, log=lambda message: None)

    def voice(text: str, samples: int, complete: bool) -> None:
        speech.say("lucy", text)
        line = fake.sent[-1]["line"]
        fake.events = [
            {"type": "started", "line": line, "speaker": "lucy", "sample_rate": 22050},
            {"type": "audio", "line": line, "speaker": "lucy", "seq": 0, "data": _pcm(samples)},
        ]
        speech.poll()
        speech.say("lucy", "Next.")  # the player moved on: stops the line
        assert fake.sent[-2] == {"type": "skip", "speaker": "lucy"}
        fake.events = [
            # Audio still in flight when the skip was sent: not played, but part of the line.
            {"type": "audio", "line": line, "speaker": "lucy", "seq": 1, "data": _pcm(500)},
            {"type": "finished", "line": line, "speaker": "lucy", "status": "skipped",
             "samples": samples + 500, "complete": complete},
        ]  # fmt: skip
        assert speech.poll() == []  # nothing of the stopped line plays

    voice("Yes, please.", 8000, complete=True)
    assert speech.say("lucy", "Yes, please.") == "cached"
    [replay] = speech.poll()
    assert len(replay.audio) == 24 + 2 * 8500  # .au header, then every sample
    voice("And some bread.", 4000, complete=False)
    assert speech.say("lucy", "And some bread.") == "sent"


def test_speech_reveal_shows_all_when_it_cannot_follow_the_voice() -> None:
    fake = FakeConnection()
    speech = client.Speech(lambda: fake, log=lambda message: None)
    # Not asked for: no timings requested, nothing held back.
    speech.say("lucy", "Yes, please.")
    assert "timings" not in fake.sent[-1]
    assert speech.reveal("Yes, please.") is None
    # A voice without timings: its audio plays with no marks before it.
    speech.say("lucy", "Yes, please.", reveal=True)
    line = fake.sent[-1]["line"]
    fake.events = [
        {"type": "started", "line": line, "speaker": "lucy", "sample_rate": 16000},
        {"type": "audio", "line": line, "speaker": "lucy", "seq": 0, "data": _pcm(8000)},
    ]
    speech.poll()
    assert speech.reveal("Yes, please.") == 0  # not playing yet: wait for it
    assert speech.reveal("Yes, please.", client.chunk_filename(line, 0), 0.1) is None
    # A line the server refuses ends without audio.
    speech.say("lucy", "Who?", reveal=True, voice="nobody")
    request = fake.sent[-1]
    assert speech.reveal("Who?") == 0
    fake.events = [{"type": "error", "id": request["id"], "code": "unknown_voice",
                    "message": "no voice named 'nobody'"}]  # fmt: skip
    speech.poll()
    assert speech.reveal("Who?") is None
    assert speech.reveal_wait() == client.REVEAL_WAIT[1]
    # No server at all; or not connected yet (a server that is not there takes a moment to
    # say so): the text is not held back.
    offline = client.Speech(lambda: None, log=lambda message: None)
    assert offline.say("lucy", "Hello?", reveal=True) == "offline"
    assert offline.reveal("Hello?") is None
    connecting = FakeConnection()
    connecting.welcome = None
    speech = client.Speech(lambda: connecting, log=lambda message: None)
    assert speech.say("lucy", "Hello?", reveal=True) == "sent"
    assert speech.reveal("Hello?") is None
    connecting.welcome = {"type": "welcome"}
    assert speech.reveal("Hello?") == 0


# --- looking ahead: the script walk and the prepared lines ----------------------------------


def _node(kind: str, **fields: Any) -> Any:
    """A stand-in for a renpy.ast node: the walk reads class names and attributes only."""
    node = type(kind, (), {})()
    node.next = None
    node.__dict__.update(fields)
    return node


def _chain(*nodes: Any) -> Any:
    for node, after in itertools.pairwise(nodes):
        node.next = after
    return nodes[0]


def _says(found: list[Any]) -> list[str]:
    return [node.what for node, _identifier in found]


def test_walk_ahead_follows_the_path_and_stops_where_it_cannot_see() -> None:
    label = _chain(_node("Label"), _node("Say", what="In the cellar."), _node("Return"))
    labels = {"cellar": label}
    play = _node("UserStatement", get_name=lambda: "play music")
    start = _chain(
        _node("Translate", identifier="start_1", language=None),
        _node("Say", what="One."), _node("Show"), play,
        _node("Translate", identifier="start_2", language=None), _node("Say", what="Two."),
        _node("Call", label="cellar", expression=False, arguments=None),
        _node("Say", what="Back up."), _node("Python"), _node("Say", what="Never reached."),
    )  # fmt: skip
    found = client.walk_ahead(start, labels.__getitem__, count=10)
    assert _says(found) == ["One.", "Two.", "In the cellar.", "Back up."]
    assert [identifier for _node_, identifier in found][:2] == ["start_1", "start_2"]
    assert _says(client.walk_ahead(start, labels.__getitem__, count=2)) == ["One.", "Two."]
    # Jumps to a label are followed; to an expression, or to a missing label, they end it.
    assert _says(client.walk_ahead(
        _node("Jump", target="cellar", expression=False), labels.__getitem__)) == [
        "In the cellar."]  # fmt: skip
    for stop in (_node("Jump", target="x", expression=True),
                 _node("Jump", target="nowhere", expression=False),
                 _node("Call", label="cellar", expression=False, arguments=object()),
                 _node("UserStatement", get_name=lambda: "voice"),
                 _node("UserStatement", get_name=lambda: "call screen"),
                 _node("While"), _node("Return")):  # fmt: skip
        stop.next = _node("Say", what="Hidden.")
        assert client.walk_ahead(stop, labels.__getitem__) == [], stop
    # A loop without lines ends.
    loop = _node("Label")
    loop.next = _node("Jump", target="loop", expression=False)
    assert client.walk_ahead(loop, {"loop": loop}.__getitem__) == []


def test_walk_ahead_takes_the_first_line_of_each_branch() -> None:
    after = _node("Say", what="After.")
    choices = [_chain(_node("Say", what=f"Choice {n}."), after) for n in range(5)]
    menu = _node("Menu", items=[("caption", "True", None)]
                 + [(f"c{n}", "True", [c]) for n, c in enumerate(choices)])  # fmt: skip
    start = _chain(_node("Say", what="Before."), menu)
    found = client.walk_ahead(start, {}.__getitem__, count=2, branches=3)
    assert _says(found) == ["Before.", "Choice 0.", "Choice 1.", "Choice 2."]
    # An if without else may also fall through; with an else, it may not.
    then, other = _node("Say", what="Then."), _node("Say", what="Else.")
    no_else = _chain(_node("If", entries=[("x", [then])]), _node("Say", what="Through."))
    assert _says(client.walk_ahead(no_else, {}.__getitem__)) == ["Then.", "Through."]
    with_else = _node("If", entries=[("x", [then]), ("True", [other])])
    assert _says(client.walk_ahead(with_else, {}.__getitem__)) == ["Then.", "Else."]


def _wav(pcm: bytes, rate: int) -> bytes:
    from dialogue_tts.audio import wav_bytes

    samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    return wav_bytes(samples, rate)


def test_wav_samples_reads_the_servers_wav() -> None:
    pcm = np.arange(-500, 500, dtype="<i2").tobytes()
    assert client.wav_samples(_wav(pcm, 16000)) == (pcm, 16000)
    assert client.wav_samples(b"RIFF....WAVEjunk") is None
    assert client.wav_samples(b"not a wav") is None


def test_speech_prepares_ahead_and_plays_prepared_lines_from_memory() -> None:
    fake = FakeConnection()
    clock = [0.0]
    speech = client.Speech(lambda: fake, log=lambda message: None, lookahead=2,
                           clock=lambda: clock[0])  # fmt: skip
    assert speech.look_ahead([{"speaker": "lucy", "text": "One."}]) == 0  # not connected yet
    speech.say("eileen", "Hello.", rate=1.1)  # connects, and sends what it was asked to
    assert [m["type"] for m in fake.sent] == ["say", "prepare"]
    fake.sent.pop()
    speech._preparing.clear()  # as if never sent: the test below counts from here
    ahead = [
        {"speaker": "lucy", "text": "One.", "rate": 1.2, "pitch": 0.95, "volume": 0.9},
        {"speaker": "eileen", "text": "Two.", "style": "warm", "reveal": True},
        {"speaker": "lucy", "text": "Three."},
    ]
    assert speech.look_ahead(ahead) == 2  # two in flight at most
    prepares = [m for m in fake.sent if m["type"] == "prepare"]
    assert prepares == [
        {"type": "prepare", "speaker": "lucy", "text": "One.", "markup": "renpy", "rate": 1.2,
         "pitch": 0.95, "volume": 0.9, "id": prepares[0]["id"]},
        {"type": "prepare", "speaker": "eileen", "text": "Two.", "markup": "renpy",
         "timings": ["word"], "style": "warm", "id": prepares[1]["id"]},
    ]  # fmt: skip
    # The same fields as the say the line will get (the server matches on them).
    say = client.line_request("say", **ahead[0])
    assert {k: v for k, v in prepares[0].items() if k != "id" and k != "type"} == {
        k: v for k, v in say.items() if k != "type"}  # fmt: skip
    # One prepared: its audio is fetched (a line that reveals its text is not: it needs the
    # marks that only a say brings), and the next line goes out.
    fake.events = [{"type": "prepared", "id": prepares[0]["id"], "duration": 0.5}]
    speech.poll()
    fetch = fake.sent[-1]
    assert fetch["type"] == "synthesize" and fetch["format"] == "wav" and fetch["text"] == "One."
    fake.events = [{"type": "prepared", "id": prepares[1]["id"], "duration": 0.5}]
    speech.poll()
    assert fake.sent[-1]["type"] == "prepare" and fake.sent[-1]["text"] == "Three."
    assert speech.look_ahead(ahead) == 0  # nothing new: in flight or prepared
    pcm = _pcm(4000)
    fake.events = [{"type": "audio_file", "id": fetch["id"], "format": "wav",
                    "data": _wav(pcm, 22050), "duration": 0.2, "sample_rate": 22050}]  # fmt: skip
    speech.poll()
    # The player reaches it: it plays from memory, and the server is not asked.
    sent = len(fake.sent)
    assert speech.say("lucy", "One.", rate=1.2, pitch=0.95, volume=0.9) == "cached"
    assert fake.sent[sent:] == [{"type": "skip", "speaker": "eileen"}]  # stops Hello.
    [chunk] = speech.poll()
    assert chunk.first and chunk.audio == client.au_bytes(pcm, 22050)
    # A jump elsewhere: the old lines are dropped; new ones wait for a free slot.
    speech.look_ahead([{"speaker": "lucy", "text": "Elsewhere."},
                       {"speaker": "lucy", "text": "Later."}])  # fmt: skip
    assert fake.sent[-1]["text"] == "Elsewhere."  # one free slot: "Three." is in flight
    speech.drop_lookahead()  # skipping
    [three] = [m for m in fake.sent if m.get("text") == "Three."]
    fake.events = [{"type": "prepared", "id": three["id"], "duration": 0.5}]
    speech.poll()
    assert fake.sent[-1]["type"] == "synthesize" and fake.sent[-1]["text"] == "Three."
    assert all(m.get("text") != "Later." for m in fake.sent)
    # However many lines ahead a game asks for, no more than the server's 4 run at once.
    speech.lookahead = 10
    speech.look_ahead([{"speaker": "lucy", "text": f"Line {n}."} for n in range(10)])
    assert len(speech._preparing) == 4


def test_speech_holds_auto_forward_until_the_voice_is_handed_out() -> None:
    fake = FakeConnection()
    clock = [0.0]
    speech = client.Speech(lambda: fake, log=lambda message: None, hold_seconds=5.0,
                           clock=lambda: clock[0])  # fmt: skip
    assert not speech.holds_voice
    speech.say("lucy", "Wait for me.")
    line = fake.sent[-1]["line"]
    assert speech.holds_voice  # sent, nothing came
    clock[0] = 4.0
    fake.events = [
        {"type": "started", "line": line, "speaker": "lucy", "sample_rate": 22050},
        {"type": "audio", "line": line, "speaker": "lucy", "seq": 0, "data": _pcm(800)},
    ]
    assert speech.poll() and speech.holds_voice  # playing, more to come
    clock[0] = 9.0
    assert speech.holds_voice  # its audio came: the wait bound no longer applies
    fake.events = [{"type": "finished", "line": line, "speaker": "lucy", "status": "done",
                    "samples": 800, "complete": True}]  # fmt: skip
    assert speech.poll() == [] and not speech.holds_voice  # the voice channel has the rest
    speech.say("lucy", "Nobody answers.")
    clock[0] = 14.1
    assert not speech.holds_voice  # 5 s without audio: auto-forward goes on
    assert speech.say("lucy", "Wait for me.") == "cached"
    assert speech.holds_voice  # handed out at the next poll
    speech.poll()
    assert not speech.holds_voice
    speech.skip()
    assert not speech.holds_voice


def test_speech_waits_once_for_a_live_lines_first_audio() -> None:
    fake = FakeConnection()
    speech = client.Speech(lambda: fake, log=lambda message: None)
    assert speech.wait_for_voice(5.0) == 0.0 and fake.waits == 0  # nothing is said
    speech.say("lucy", "Wait for me.")
    line = fake.sent[-1]["line"]
    fake.arrivals = [
        [{"type": "queued", "id": fake.sent[-1]["id"]}],
        [{"type": "started", "line": line, "speaker": "lucy", "sample_rate": 22050}],
        [{"type": "audio", "line": line, "speaker": "lucy", "seq": 0, "data": _pcm(800)}],
        [{"type": "finished", "line": line, "speaker": "lucy", "status": "done"}],
    ]
    assert speech.wait_for_voice(5.0) < 5.0
    assert fake.waits == 3 and len(fake.arrivals) == 1  # up to the first audio, no further
    (chunk,) = speech.poll()
    assert chunk.first and chunk.line == line
    assert speech.wait_for_voice(5.0) == 0.0 and fake.waits == 3  # playing: no wait
    fake.events = fake.arrivals.pop()  # finished: the line is cached
    assert speech.poll() == []

    speech.say("lucy", "Nobody answers.")  # nothing comes in time: it plays when it comes
    fake.arrivals = []
    speech.wait_for_voice(0.01)
    assert fake.waits == 4 and speech.poll() == [] and speech.holds_voice
    speech.wait_for_voice(5.0)
    assert fake.waits == 4  # once per line

    speech.say("lucy", "An error ends it.")
    fake.arrivals = [[{"type": "error", "id": fake.sent[-1]["id"], "code": "unknown_voice",
                       "message": "no such voice"}]]  # fmt: skip
    speech.wait_for_voice(5.0)
    assert fake.waits == 5 and not speech.holds_voice

    speech.say("lucy", "Wait for me.")  # cached: plays from memory, nothing to wait for
    assert speech.wait_for_voice(5.0) == 0.0 and fake.waits == 5
    speech.poll()
    speech.say("lucy", "Closed.")
    fake.closed = True
    assert speech.wait_for_voice(5.0) == 0.0 and fake.waits == 5


# --- (b) the client against a real server -------------------------------------------------


@pytest.fixture(scope="module")
def server_port() -> Iterator[int]:
    with server_process() as (port, _process):
        yield port


def _poll_until(source: Any, predicate: Any, timeout: float = 60) -> list[Any]:
    """Poll ``source`` until ``predicate(everything so far)``; a generous guard, not a test."""
    seen: list[Any] = []
    deadline = time.monotonic() + timeout
    while not predicate(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting; saw {seen!r:.2000}")
        seen += source()
        time.sleep(0.01)
    return seen


def test_connection_says_a_line(server_port: int) -> None:
    connection = client.Connection(port=server_port, client_name="pytest", pace=False).start()
    assert connection.send({"type": "say", "id": 1, "speaker": "guard", "line": "g1",
                            "text": "Halt! Who goes there?", "markup": "renpy"})  # fmt: skip
    events = _poll_until(connection.poll, lambda seen: any(e["type"] == "finished" for e in seen))
    types = [e["type"] for e in events]
    assert types[:3] == ["welcome", "queued", "started"]
    assert connection.welcome is not None and connection.welcome["protocol"] == 1
    audio = [e for e in events if e["type"] == "audio"]
    assert [e["seq"] for e in audio] == list(range(len(audio)))
    finished = events[-1]
    assert finished["type"] == "finished" and finished["status"] == "done"
    assert finished["samples"] * 2 == sum(len(e["data"]) for e in audio)
    assert finished["samples"] > 22050 * 0.5  # over half a second of speech
    connection.close()
    closed = _poll_until(connection.poll, lambda seen: bool(seen))
    assert closed == [{"type": "closed", "message": "closed by the game"}]
    assert connection.closed


def test_speech_voices_skips_and_caches(server_port: int) -> None:
    logs: list[str] = []

    def connect() -> Any:
        return client.Connection(port=server_port, client_name="pytest").start()

    speech = client.Speech(connect, log=logs.append)
    text = "The bridge fell last night, {i}so{/i} nobody has come through since the storm."
    assert speech.say("innkeeper", text, rate=1.1) == "sent"
    chunks = _poll_until(speech.poll, lambda seen: len(seen) >= 1)
    assert chunks[0].first and chunks[0].audio[:4] == b".snd"
    # Skip mid-line, like a click: the server stops the line; no more audio comes for it.
    assert speech.skip()
    line = chunks[0].line
    assert speech.say("traveler", "Then I will take the mountain pass.") == "sent"
    heard = _poll_until(speech.poll, lambda seen: len(seen) >= 1)
    assert all(chunk.line != line for chunk in heard)
    assert heard[0].first
    # Let the traveler's line finish; then it is in the cache and comes back without the server.
    heard += _poll_until(speech.poll, lambda seen: not speech.receiving)
    assert sum(len(c.audio) - 24 for c in heard) > 2 * 22050  # a second of speech at least
    assert speech.say("traveler", "Then I will take the mountain pass.") == "cached"
    [replay] = speech.poll()
    assert replay.first and replay.line.startswith("cache-")
    assert len(replay.audio) - 24 == sum(len(c.audio) - 24 for c in heard)
    assert logs == []
    speech.close()


def test_speech_waits_for_the_first_audio_of_a_real_voice(server_port: int) -> None:
    """The wait a live line's interaction makes: on a new connection (it connects, says
    hello, then the line), it returns once the first audio is there for ``poll``."""
    speech = client.Speech(
        lambda: client.Connection(port=server_port, client_name="pytest").start(),
        log=lambda message: None,
    )
    assert speech.say("guard", "Halt! Who goes there?") == "sent"
    speech.wait_for_voice(60.0)  # a generous guard, not a time limit
    chunks = speech.poll()
    assert chunks and chunks[0].first and chunks[0].audio[:4] == b".snd"
    speech.close()


def test_speech_reveal_with_a_real_voice(server_port: int) -> None:
    """Word marks from the real voice: played back chunk by chunk, the text is revealed word
    by word, at word boundaries, and all of it by the end."""
    text = "Welcome back, {b}friend{/b}.{w=0.5} Stew again? There is always bread."
    speech = client.Speech(lambda: client.Connection(port=server_port).start())
    assert speech.say("eileen", text, reveal=True) == "sent"
    chunks = _poll_until(speech.poll, lambda seen: not speech.receiving)
    line = speech._current
    assert [text[start:end] for _, _, start, end in line.words] == [
        "Welcome", "back", "friend", "Stew", "again", "There", "is", "always", "bread"
    ]  # fmt: skip
    shown = []
    for chunk in chunks:  # what get_playing / get_pos report as each chunk plays
        samples = (len(chunk.audio) - 24) // 2
        for played in range(0, samples + 1, 1024):
            seconds = played / line.sample_rate
            shown.append(speech.reveal(text, client.chunk_filename(chunk.line, chunk.seq), seconds))
    assert shown[0] == 0 and shown[-1] == len(text)
    assert shown == sorted(shown)
    steps = sorted(set(shown))
    assert len(steps) >= 9  # word by word
    for step in steps[1:-1]:
        assert text[step].isspace(), text[:step]  # a word, its punctuation and tags, no more
    assert text[: steps[3]] == "Welcome back, {b}friend{/b}.{w=0.5}"
    assert speech.reveal(text) is None  # played out
    speech.close()


def test_speech_reports_server_errors_once(server_port: int) -> None:
    logs: list[str] = []
    speech = client.Speech(lambda: client.Connection(port=server_port).start(), log=logs.append)
    for text in ("Who are you?", "Answer me!"):
        assert speech.say("e", text, voice="nobody") == "sent"
        _poll_until(speech.poll, lambda seen: not speech.receiving)  # the error ends the line
    assert logs == ["dialogue-tts: unknown_voice: no voice named 'nobody'"]
    speech.close()


def test_speech_without_server_is_silent_and_logs_once() -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logs: list[str] = []
    now = [100.0]
    speech = client.Speech(
        lambda: client.Connection(port=port).start(), log=logs.append, clock=lambda: now[0]
    )
    speech.say("e", "Hello?")
    _poll_until(lambda: [1] if speech.connection.closed else [], bool)
    assert speech.poll() == []
    assert len(logs) == 1 and f"127.0.0.1:{port}" in logs[0]
    assert speech.say("e", "Anyone?") == "offline"  # no new attempt before retry_seconds
    now[0] += 60
    speech.say("e", "Still nobody?")  # tries again, fails again: not logged again
    _poll_until(lambda: [1] if speech.connection.closed else [], bool)
    speech.poll()
    assert len(logs) == 1


TOKEN = "renpy-test-token"
SERVER_CAST = {"speakers": {"guard": {"pitch": 0.85, "styles": {"stern": {"rate": 0.9}}}}}


@pytest.fixture(scope="module")
def token_server() -> Iterator[ServerThread]:
    """A server started with a token, and a cast with the guard's style "stern"."""
    server = ServerThread(ServerConfig(port=0, token=TOKEN, cast=Cast.from_dict(SERVER_CAST)))
    yield server.start()
    server.stop()


def test_connection_sends_token_and_cast(token_server: ServerThread) -> None:
    cast = {"speakers": {"guard": {"styles": {"angry": {"rate": 1.2, "volume": 1.3}}}}}
    connection = client.Connection(port=token_server.port, pace=False, token=TOKEN, cast=cast)
    connection.start()
    connection.send({"type": "cast", "id": 1})
    connection.send({"type": "say", "id": 2, "speaker": "guard", "text": "Stop right there!",
                     "style": "angry", "pitch": 1.2})  # fmt: skip
    events = _poll_until(connection.poll, lambda seen: any(e["type"] == "finished" for e in seen))
    assert events[0]["type"] == "welcome"
    [reply] = [e for e in events if e["type"] == "cast"]
    # The game's cast replaced the server's for this connection.
    assert reply["cast"]["source"] == "hello"
    assert set(reply["cast"]["speakers"]["guard"]["styles"]) == {"angry"}
    assert events[-1]["status"] == "done" and events[-1]["samples"] > 0
    connection.close()


def test_speech_with_token_style_and_pitch(token_server: ServerThread) -> None:
    logs: list[str] = []
    speech = client.Speech(
        lambda: client.Connection(port=token_server.port, token=TOKEN).start(), log=logs.append
    )
    assert speech.say("guard", "Halt.", style="stern", pitch=1.2) == "sent"
    chunks = _poll_until(speech.poll, lambda seen: not speech.receiving)
    assert chunks and chunks[0].audio[:4] == b".snd"
    # Only a line that finished "done" is cached; the same settings replay it.
    assert speech.say("guard", "Halt.", style="stern", pitch=1.2) == "cached"
    assert speech.say("guard", "Halt.", style="stern", pitch=0.8) == "sent"  # a new line
    _poll_until(speech.poll, lambda seen: not speech.receiving)
    # A style the server's cast lacks is refused by the server: proof that it was sent.
    assert speech.say("guard", "Halt.", style="cheerful") == "sent"
    _poll_until(speech.poll, lambda seen: not speech.receiving)
    assert len(logs) == 1 and "unknown_style" in logs[0], logs
    assert speech.refused is None
    speech.close()


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_speech_refused_without_the_token(token_server: ServerThread, token: str | None) -> None:
    logs: list[str] = []
    attempts: list[Any] = []
    now = [100.0]

    def connect() -> Any:
        attempts.append(client.Connection(port=token_server.port, token=token).start())
        return attempts[-1]

    speech = client.Speech(connect, log=logs.append, clock=lambda: now[0])
    # "offline" when the refusal already closed the connection the say was about to use.
    assert speech.say("e", "Hello?") in ("sent", "offline")
    _poll_until(speech.poll, lambda seen: speech.connection.closed and not speech.receiving)
    speech.poll()
    assert speech.refused == "unauthorized"
    assert len(logs) == 1, logs  # one clear message, not also "no voice server"
    assert "refused" in logs[0] and "unauthorized" in logs[0] and "DIALOGUE_TTS_TOKEN" in logs[0]
    assert TOKEN not in logs[0] and "wrong-token" not in logs[0]
    # Long after the usual retry delay, lines stay silent and nothing reconnects.
    now[0] += 3600
    assert speech.say("e", "Anyone?") == "offline"
    assert speech.poll() == []
    assert len(attempts) == 1 and len(logs) == 1


_OLD_PYTHON_CHECK = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import dialogue_tts_client as c
vectors = json.load(open(sys.argv[2]))
for v in vectors["requests"] + vectors["events"]:
    frame = bytes.fromhex(v["frame_hex"])
    [message] = c.FrameReader().feed(frame)
    assert c.encode_frame(message) == frame, v["name"]
connection = c.Connection(port=int(sys.argv[3]), pace=False).start()
connection.send({"type": "say", "speaker": "old", "text": "Still here."})
events = []
deadline = time.monotonic() + 60
while not any(e["type"] == "finished" for e in events) and time.monotonic() < deadline:
    events += connection.poll()
    time.sleep(0.01)
assert events[-1]["status"] == "done", events[-1]
speech = c.Speech(lambda: c.Connection(port=int(sys.argv[3])).start())
assert speech.say("old", "Hello again.") == "sent"
chunks = []
while (speech.receiving or not chunks) and time.monotonic() < deadline:
    chunks += speech.poll()
    time.sleep(0.01)
assert chunks and chunks[0].audio[:4] == b".snd"
assert speech.say("old", "Hello again.") == "cached"
assert speech.say("old", "Hello, friend.", reveal=True) == "sent"
while speech.receiving and time.monotonic() < deadline:
    chunks = speech.poll()
    time.sleep(0.01)
assert [w[2:] for w in speech._current.words] == [[0, 5], [7, 13]], speech._current.words
assert speech.reveal("Hello, friend.") == 0
assert c.revealed_length("Hello, friend.", speech._current.words, 10**9) == 14
assert c.hide_after("{b}Hello{/b}, friend.", 5).startswith("{b}He{/b}{alpha=0}")
print(sys.version_info[:2], len(events), "events")
"""


def _find_python(name: str) -> str | None:
    """``name`` (python3.9) on PATH, else from pyenv's versions folder, if it runs."""
    version = name.removeprefix("python")
    candidates = [shutil.which(name)]
    candidates += sorted(str(p) for p in Path.home().glob(f".pyenv/versions/{version}*/bin/{name}"))
    for candidate in candidates:
        if candidate and not subprocess.run([candidate, "-c", ""], capture_output=True).returncode:
            return candidate
    return None


@pytest.mark.parametrize("python", ["python3.9", "python3.12"])
def test_client_runs_on_other_pythons(python: str, server_port: int) -> None:
    """Ren'Py 8.0 embeds Python 3.9; newer Ren'Py 3.12. The module must run on both."""
    executable = _find_python(python)
    if executable is None:
        pytest.skip(f"{python} is not installed")
    result = subprocess.run(
        [executable, "-B", "-c", _OLD_PYTHON_CHECK, str(BINDING),
         str(REPO / "protocol" / "vectors.json"), str(server_port)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "events" in result.stdout


# --- (c) the example game in real Ren'Py ----------------------------------------------------

needs_renpy = needs_engine(
    RENPY.exists(), "Ren'Py is not installed (CI runs `apt-get install renpy`: /usr/games/renpy)"
)


class RecordingProxy:
    """Forwards TCP between the game and the server, decoding every frame both ways."""

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self.records: list[tuple[str, dict[str, Any]]] = []  # ("game"|"server", message)
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                game, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(("127.0.0.1", self.server_port))
            for source, sink, who in ((game, server, "game"), (server, game, "server")):
                threading.Thread(target=self._pump, args=(source, sink, who), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, who: str) -> None:
        from dialogue_tts.protocol import MAX_EVENT_FRAME, FrameDecoder

        decoder = FrameDecoder(MAX_EVENT_FRAME)
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                decoder.feed(data)
                while (payload := decoder.next_payload()) is not None:
                    message = msgpack.unpackb(payload, raw=False)
                    if message.get("type") == "audio":
                        message["data"] = len(message["data"])
                    with self._lock:
                        self.records.append((who, message))
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._listener.close()


def _game_copy(tmp_path: Path) -> Path:
    # Ren'Py writes cache/, saves/ and .rpyc files into the game: run a copy. The copy
    # follows the example's link to the binding, so it holds the binding's real files.
    game = tmp_path / "example"
    shutil.copytree(EXAMPLE, game, ignore=shutil.ignore_patterns("*.rpyc", "cache", "saves"))
    return game


def _run_renpy(game: Path, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [str(RENPY), str(game), *args],
        env={**os.environ, "SDL_VIDEODRIVER": "offscreen", "SDL_AUDIODRIVER": "dummy",
             "HOME": str(game.parent), **(env or {})},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def _play_example(
    game: Path, server_port: int, env: dict[str, str]
) -> tuple[Any, dict[str, Any], RecordingProxy]:
    """Plays the example game to its end through a RecordingProxy to ``server_port``.

    Returns Ren'Py's run, the game's test report (it must have finished without an error)
    and the proxy, which holds every message both ways."""
    report_path = game.parent / "report.json"
    proxy = RecordingProxy(server_port)
    try:
        result = _run_renpy(
            game,
            env={"DIALOGUE_TTS_PORT": str(proxy.port),
                 "DIALOGUE_TTS_TEST_REPORT": str(report_path), **env},
        )  # fmt: skip
    finally:
        proxy.close()
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads(report_path.read_text())
    assert report["finished"] and "error" not in report, report
    return result, report, proxy


EXPECTED_LINES = [
    ("narrator", "The tavern is quiet tonight."),
    ("eileen", "Welcome back, {b}friend{/b}.{w=0.5} Stew again?"),
    ("lucy", "Yes, please. And some bread, if there is any left."),
    ("eileen", "There is always bread for you, Lucy."),  # [player_name], filled in by Ren'Py
    ("lucy", "The road was cold, the rain never stopped, and the bridge at the ford was gone, "
     "so we walked the long way round the hills, past the old mill and the empty farms."),
    ("narrator", "Eileen laughs and fills two bowls."),
    ("eileen", "Sit down. Eat."),
]  # fmt: skip


@needs_renpy
def test_example_game_lint(tmp_path: Path) -> None:
    game = _game_copy(tmp_path)
    proxy = RecordingProxy(1)  # nothing may connect during lint
    try:
        result = _run_renpy(game, "lint", env={"DIALOGUE_TTS_PORT": str(proxy.port)})
    finally:
        proxy.close()
    report = result.stdout
    assert result.returncode == 0, result.stderr
    assert "lint report" in report and "Statistics:" in report, report + result.stderr
    problems = report.split("lint report", 1)[1].split("Statistics:", 1)[0].splitlines()[1:]
    assert [line for line in problems if line.strip()] == [], report
    assert proxy.connections == 0


@needs_renpy
def test_example_game_plays_against_server(tmp_path: Path) -> None:
    game = _game_copy(tmp_path)
    # The server wants a token; the binding reads it from the environment by itself.
    with server_process(env={"DIALOGUE_TTS_TOKEN": TOKEN}) as (port, _server):
        # Without lookahead: every line is said live (test_example_game_prepares_ahead has it).
        result, report, proxy = _play_example(
            game, port, {"DIALOGUE_TTS_TOKEN": TOKEN, "DIALOGUE_TTS_LOOKAHEAD": "0"}
        )
    output = result.stdout + result.stderr
    assert TOKEN not in output + (game / "log.txt").read_text(encoding="utf-8", errors="replace")

    from_game = [m for who, m in proxy.records if who == "game"]
    from_server = [m for who, m in proxy.records if who == "server"]
    hello = from_game[0]
    assert hello["type"] == "hello" and hello["client"] == "renpy" and hello["token"] == TOKEN
    # The cast file, read when the game connected, went as TOML text.
    assert hello["cast"] == (EXAMPLE / "game" / "cast.toml").read_text(encoding="utf-8")
    assert from_server[0]["type"] == "welcome"
    says = [m for m in from_game if m["type"] == "say"]
    # Every line, in order, with its speaker (voice_tag, or "narrator"), with Ren'Py markup.
    assert [(m["speaker"], m["text"]) for m in says[:7]] == EXPECTED_LINES
    assert all(m["markup"] == "renpy" and m["interrupt"] is True for m in says)
    assert says[4]["rate"] == 1.2 and says[4]["volume"] == 0.9  # Lucy's settings
    assert says[4]["pitch"] == 0.95 and "style" not in says[4]
    assert says[6]["style"] == "warm"  # the say statement's (cb_tts_style="warm")
    # After the rollback, the line rolled back to came from the local cache: nothing was
    # asked again, except perhaps the very last line, if its finish raced the rollback.
    assert all(m["text"] == "Sit down. Eat." for m in says[7:]), [m["text"] for m in says[7:]]
    assert report["rolled_back"]

    # The click in the middle of Lucy's long line sent a skip, and the server cut the line.
    long_line = says[4]["line"]
    assert report["clicked"] == 4
    skips = [m for m in from_game if m["type"] == "skip"]
    assert any(m["speaker"] == "lucy" for m in skips)
    finished = {m["line"]: m for m in from_server if m["type"] == "finished"}
    assert finished[long_line]["status"] == "skipped"
    assert any(m["type"] == "skipped" and m["line"] == long_line for m in from_server)
    assert finished[says[0]["line"]]["status"] == "done"
    assert finished[says[6]["line"]]["status"] == "done"  # the cast's style was accepted

    # Audio was played on the voice channel for every line, the rolled-back ones from the cache.
    played = report["played"]
    for index in range(7):
        files = [p["file"] for p in played if p["line"] == index]
        assert files, f"nothing played for line {index}: {played}"
        assert all(f.startswith(f"dialogue_tts/line-{says[index]['line']}-") for f in files)
    assert any(p["line"] == 7 and p["file"].startswith("dialogue_tts/line-cache-") for p in played)
    # The server sent audio for each line it was asked for.
    audio_lines = {m["line"] for m in from_server if m["type"] == "audio"}
    assert {m["line"] for m in says} <= audio_lines
    _check_reveals(report, says, from_server, finished)


def _memory_hits(port: int) -> int:
    """The server's prepared-lines cache hits so far (its status reply)."""

    async def ask() -> int:
        async with await Client.connect(port=port) as status_client:
            cache = (await status_client.status_report()).cache
        assert cache is not None
        return int(cache["memory"]["hits"])

    return asyncio.run(ask())


@needs_renpy
def test_example_game_prepares_ahead(tmp_path: Path) -> None:
    """With lookahead (on by default), each line after the first is prepared while the one
    before it plays, and played from what was prepared: the lines without revealed text
    from memory, fetched from the server's cache (no say is sent), Eileen's revealed lines
    by a say that the server's cache serves."""
    game = _game_copy(tmp_path)
    with server_process() as (port, _server):
        _result, report, proxy = _play_example(game, port, {})
        hits = _memory_hits(port)
    from_game = [m for who, m in proxy.records if who == "game"]
    prepares = [m for m in from_game if m["type"] == "prepare"]
    fetches = [m for m in from_game if m["type"] == "synthesize"]
    says = [m for m in from_game if m["type"] == "say"]
    prepared_texts = [m["text"] for m in prepares]
    # Every line but the first, in order, with the settings its say would have.
    assert prepared_texts == [text for _speaker, text in EXPECTED_LINES[1:]], prepared_texts
    for prepare in prepares:
        index = [text for _speaker, text in EXPECTED_LINES].index(prepare["text"])
        assert prepare["speaker"] == EXPECTED_LINES[index][0]
        assert ("timings" in prepare) == (index in EILEEN_LINES)
        if index == 4:
            assert prepare["rate"] == 1.2 and prepare["pitch"] == 0.95
        if index == 6:
            assert prepare["style"] == "warm"
    # Lines without revealed text: fetched once prepared, played from memory, never said.
    plain = [i for i in range(1, 7) if i not in EILEEN_LINES]
    assert sorted(m["text"] for m in fetches) == sorted(EXPECTED_LINES[i][1] for i in plain)
    assert [m["text"] for m in says] == [EXPECTED_LINES[i][1] for i in (0, *EILEEN_LINES)]
    played = report["played"]
    for index in plain:
        files = [p["file"] for p in played if p["line"] == index]
        assert files and all(f.startswith("dialogue_tts/line-cache-") for f in files), played
    # Eileen's lines: said, and served by the server's cache of prepared lines; each fetch
    # hit it too.
    assert hits >= len(fetches) + 1, hits
    for index in EILEEN_LINES:
        assert any(p["line"] == index for p in played), played


EILEEN_LINES = (1, 3, 6)
"""The lines of EXPECTED_LINES that Eileen says: her show_function is dialogue_tts.reveal_say."""


def _check_reveals(
    report: dict[str, Any], says: list[Any], from_server: list[Any], finished: dict[Any, Any]
) -> None:
    """Eileen's text was held back until her voice started, then revealed word by word as it
    played; a click showed all of it at once while her voice went on."""
    for index, say in enumerate(says[:7]):
        marks = [m for m in from_server if m["type"] == "marks" and m["line"] == say["line"]]
        if index in EILEEN_LINES:
            assert say["timings"] == ["word"]
            assert any(m.get("words") for m in marks)
        else:
            assert "timings" not in say and not marks
    reveals = report["reveals"]  # (text, shown) whenever it changed; shown None: all of it
    texts = {EXPECTED_LINES[index][1]: index for index in EILEEN_LINES}
    assert {r["text"] for r in reveals} <= set(texts), reveals
    partial = 0
    for text, index in texts.items():
        # The record of a change can come a tick late, once the next line has begun.
        records = [r for r in reveals if r["text"] == text and r["line"] in (index, index + 1)]
        if index == 6:  # after it come its rollback and its replay, from the cache
            records = [r for r in records if r["line"] == index]
        assert records and records[0]["shown"] == 0, records  # held back until the voice
        started = min(p["t"] for p in report["played"] if p["line"] == index)
        shown = [r["shown"] for r in records if r["shown"] is not None]
        assert shown == sorted(shown), records
        for record in records:
            if record["shown"]:
                assert record["t"] >= started, records  # only once the voice plays
            if record["shown"] and record["shown"] < len(text):
                partial += 1
                assert text[record["shown"]].isspace(), records  # whole words
        if index in (1, 3):
            assert records[-1]["shown"] is None, records  # all of it in the end
    assert partial >= 2, reveals  # word by word (however coarse the headless audio clock)
    # The click while the bread line was being revealed showed all of it, and the voice went
    # on to the end: the click finished the text, it did not skip the line.
    assert report["reveal_clicked"] == 3
    bread = [r for r in reveals if r["text"] == EXPECTED_LINES[3][1]]
    assert bread[-1]["shown"] is None
    assert (bread[-1]["playing"] or "").startswith(f"dialogue_tts/line-{says[3]['line']}-"), bread
    assert finished[says[3]["line"]]["status"] == "done"


def _check_no_reveals(report: dict[str, Any]) -> None:
    """Without a voice, reveal_say held nothing back: Eileen's text showed as usual."""
    assert report["reveals"], "reveal_say's text was never drawn"
    assert all(r["shown"] is None for r in report["reveals"]), report["reveals"]


@needs_renpy
def test_example_game_plays_prerendered_files(tmp_path: Path) -> None:
    """Ren'Py's own export, rendered by renpy-render, played by config.auto_voice."""
    game = _game_copy(tmp_path)
    export = _run_renpy(game, "dialogue", "None")
    assert export.returncode == 0, export.stdout + export.stderr
    rows = (game / "dialogue.tab").read_text(encoding="utf-8").splitlines()[1:]
    identifiers = [row.split("\t")[0] for row in rows]
    assert len(identifiers) == 7
    render = run_command(
        "renpy-render", game / "dialogue.tab", "--map", EXAMPLE / "voices.json", "--quiet"
    )
    assert render.returncode == 0, render.stderr
    assert "7 to render" in render.stdout

    # Nothing may connect: every line has its file.
    _result, report, proxy = _play_example(game, 1, {"DIALOGUE_TTS_AUTO_VOICE": "voice/{id}.ogg"})
    assert proxy.connections == 0
    for index, identifier in enumerate(identifiers):
        files = [p["file"] for p in report["played"] if p["line"] == index]
        assert files == [f"voice/{identifier}.ogg"], report["played"]


@needs_renpy
def test_example_game_refused_by_server(tmp_path: Path) -> None:
    """A wrong token: the game plays through silently, says why once, and never retries."""
    game = _game_copy(tmp_path)
    with server_process(env={"DIALOGUE_TTS_TOKEN": TOKEN}) as (port, _server):
        _result, report, proxy = _play_example(game, port, {"DIALOGUE_TTS_TOKEN": "wrong-token"})
    assert len(report["lines"]) == 7
    assert report["played"] == []
    _check_no_reveals(report)
    log = (game / "log.txt").read_text(encoding="utf-8", errors="replace")
    assert log.count("dialogue-tts: the server refused the game (unauthorized") == 1, log
    assert "no voice server" not in log and "wrong-token" not in log
    # Seven lines and many seconds, and one connection: the hello that was refused.
    assert proxy.connections == 1
    assert [m["type"] for who, m in proxy.records if who == "server"] == ["error"]


@needs_renpy
def test_example_game_without_server(tmp_path: Path) -> None:
    """No server: the game plays through silently and says so once in log.txt."""
    game = _game_copy(tmp_path)
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    report_path = tmp_path / "report.json"
    result = _run_renpy(
        game,
        env={"DIALOGUE_TTS_PORT": str(port), "DIALOGUE_TTS_TEST_REPORT": str(report_path)},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads(report_path.read_text())
    assert report["finished"] and "error" not in report, report
    assert len(report["lines"]) == 7
    assert report["played"] == []
    _check_no_reveals(report)
    log = (game / "log.txt").read_text(encoding="utf-8", errors="replace")
    assert log.count("dialogue-tts: no voice server at") == 1, log
    assert f"127.0.0.1:{port}" in log


# --- lookahead through a menu, rollback and auto-forward at its fastest -----------------------

HARNESS = REPO / "tests" / "data" / "renpy_harness"
MENU_LINES = [
    "Good evening. Come in from the rain.",
    "Thank you. A cup of tea, if you would.",  # [drink], filled in ahead of time
    "Will you have the stew or the bread with it?",
    "The bread it is, baked this morning.",  # the second choice, then a rollback
    "The stew it is, hot from the pot.",  # the first choice, after the rollback
    "Thank you. That will do nicely.",
]


def _harness_game(tmp_path: Path) -> Path:
    """A game of the binding, the harness (tests/data/renpy_harness) and its menu scene."""
    game = tmp_path / "menu_game"
    shutil.copytree(BINDING, game / "game" / "dialogue_tts",
                    ignore=shutil.ignore_patterns("*.rpyc", "__pycache__"))  # fmt: skip
    for source in (*HARNESS.glob("*.rpy"), EXAMPLE / "game" / "00python311_fix.rpy"):
        shutil.copy(source, game / "game" / source.name)
    return game


def _play_harness(game: Path, port: int, env: dict[str, str]) -> tuple[dict[str, Any], Any]:
    report_path = game.parent / f"report-{len(list(game.parent.glob('report-*')))}.json"
    proxy = RecordingProxy(port)
    try:
        result = _run_renpy(
            game,
            env={
                "DIALOGUE_TTS_PORT": str(proxy.port),
                "DIALOGUE_TTS_HARNESS_REPORT": str(report_path),
                **env,
            },
        )
    finally:
        proxy.close()
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    report = json.loads(report_path.read_text())
    assert report["finished"] and "error" not in report, report
    return report, proxy


def _check_every_line_heard_and_no_other(report: dict[str, Any], lines: list[str]) -> None:
    """Each line's voice played while it was shown (auto-forward dropped none), and nothing
    else: every file the voice channel started was of the line on screen."""
    assert [line["what"] for line in report["lines"]] == lines
    for index, line in enumerate(report["lines"]):
        heard = [p for p in report["played"] if p["line"] == index]
        assert heard, f"line {index} ({line['what']!r}) was never voiced: {report['played']}"
        for played in heard:
            assert played["text"] == line["what"], (index, played)
    assert all(p["line"] >= 0 for p in report["played"]), report["played"]


@needs_renpy
def test_lookahead_through_a_menu_and_a_rollback_plays_no_wrong_line(tmp_path: Path) -> None:
    """Fastest auto-forward. The menu's two choices are both prepared; the game takes the
    second, rolls back to the menu and takes the first: each line plays its own voice, from
    what was prepared, and none is dropped."""
    game = _harness_game(tmp_path)
    with server_process() as (port, _server):
        report, proxy = _play_harness(
            game,
            port,
            {"DIALOGUE_TTS_CHOICES": "1,0", "DIALOGUE_TTS_ROLLBACK_AFTER": MENU_LINES[3]},
        )
    assert report["rolled_back"]
    _check_every_line_heard_and_no_other(report, MENU_LINES)
    from_game = [m for who, m in proxy.records if who == "game"]
    prepared = [m["text"] for m in from_game if m["type"] == "prepare"]
    assert set(prepared) == set(MENU_LINES[1:]), prepared  # both choices, [drink] filled in
    assert prepared.index(MENU_LINES[3]) < prepared.index(MENU_LINES[5])
    # Every line after the first played from memory, without a say.
    assert [m["text"] for m in from_game if m["type"] == "say"] == MENU_LINES[:1]
    for index in range(1, len(MENU_LINES)):
        files = [p["file"] for p in report["played"] if p["line"] == index]
        assert all(f.startswith("dialogue_tts/line-cache-") for f in files), report["played"]


@needs_renpy
def test_fastest_auto_forward_waits_for_live_voices(tmp_path: Path) -> None:
    """Without lookahead every line is synthesized as it begins; its interaction waits for
    its first audio, and auto-forward at its fastest waits for each voice to play: no line
    is dropped, none plays another's, each starts before its text shows."""
    game = _harness_game(tmp_path)
    with server_process("--no-cache") as (port, _server):
        report, proxy = _play_harness(
            game,
            port,
            {
                "DIALOGUE_TTS_CHOICES": "0",
                "DIALOGUE_TTS_LOOKAHEAD": "0",
                # Each interaction waits for its line's first audio (a bound never reached).
                "DIALOGUE_TTS_VOICE_START_WAIT": "60",
            },
        )
    lines = [*MENU_LINES[:3], MENU_LINES[4], MENU_LINES[5]]
    _check_every_line_heard_and_no_other(report, lines)
    # Each line's voice was on the channel before its first frame was drawn: it started
    # with its text, as a voice file does.
    for index, line in enumerate(report["lines"]):
        first = min(p["t"] for p in report["played"] if p["line"] == index)
        assert first < line["drawn"], (index, line, first)
    from_game = [m for who, m in proxy.records if who == "game"]
    assert not any(m["type"] == "prepare" for m in from_game)
    assert [m["text"] for m in from_game if m["type"] == "say"] == lines


KOKORO_VOICES = {"eileen": "kokoro:af_heart", "lucy": "kokoro:bf_emma"}


@needs_renpy
def test_two_characters_voiced_live_by_two_kokoro_voices(kokoro_dir: Path, tmp_path: Path) -> None:
    """The menu scene with Eileen and Lucy cast to two Kokoro voices in the server's cast
    (loaded before the server listens), with lookahead: Kokoro is 7-10x slower than Piper,
    so each line is prepared while the one before it plays. Every line is heard. Each line
    the game said started in its character's voice at 24 kHz; each prepared line the game
    fetched is exactly what its character's voice says, and not what the other one says."""
    cast = tmp_path / "kokoro-cast.toml"
    cast.write_text("".join(f'[speakers.{s}]\nvoice = "{v}"\n' for s, v in KOKORO_VOICES.items()))
    game = _harness_game(tmp_path)
    lines = [*MENU_LINES[:3], MENU_LINES[4], MENU_LINES[5]]
    speakers = dict(zip(lines, ["eileen", "lucy", "eileen", "eileen", "lucy"], strict=True))
    speakers[MENU_LINES[3]] = "eileen"  # the choice not taken may be prepared too
    with server_process("--voices", str(kokoro_dir), "--cast", str(cast)) as (port, _server):
        # However slow the machine, auto-forward waits for each voice (as a game whose
        # voices are slow would set dialogue_tts.voice_wait): a guard, not a time limit.
        report, proxy = _play_harness(
            game, port, {"DIALOGUE_TTS_CHOICES": "0", "DIALOGUE_TTS_VOICE_WAIT": "120"}
        )
        from_game = [m for who, m in proxy.records if who == "game"]
        says = [m for m in from_game if m["type"] == "say"]
        fetches = [m for m in from_game if m["type"] == "synthesize"]

        async def said_by(voice: str, request: dict[str, Any]) -> np.ndarray:
            """The game's line, asked for by voice name (not through the cast)."""
            options = {key: request[key] for key in ("rate", "pitch", "volume", "markup")
                       if key in request}  # fmt: skip
            async with await Client.connect(port=port) as client:
                reply = await client.synthesize(
                    request["text"], speaker="probe", voice=voice, format="wav", **options
                )
            return _wav_pcm(reply.data)

        expected = [asyncio.run(said_by(KOKORO_VOICES[speakers[m["text"]]], m)) for m in fetches]
        lucy = next(m for m in [*fetches, *says] if speakers[m["text"]] == "lucy")
        in_both_voices = [asyncio.run(said_by(voice, lucy)) for voice in KOKORO_VOICES.values()]
    _check_every_line_heard_and_no_other(report, lines)
    assert {m["text"] for m in [*says, *fetches]} >= set(lines)  # each said or prepared
    from_server = [m for who, m in proxy.records if who == "server"]
    started = {m["line"]: m for m in from_server if m["type"] == "started"}
    for say in says:
        assert say["speaker"] == speakers[say["text"]]
        voice = (started[say["line"]]["voice"], started[say["line"]]["sample_rate"])
        assert voice == (KOKORO_VOICES[say["speaker"]], 24_000), say["text"]
    files = {m["id"]: m for m in from_server if m["type"] == "audio_file"}
    for fetch, wanted in zip(fetches, expected, strict=True):
        assert files[fetch["id"]]["sample_rate"] == 24_000, fetch["text"]
        assert np.array_equal(_wav_pcm(files[fetch["id"]]["data"]), wanted), fetch["text"]
    eileens, lucys = in_both_voices
    assert not np.array_equal(eileens[: len(lucys)], lucys[: len(eileens)])


def _wav_pcm(data: bytes) -> np.ndarray:
    audio, _rate = soundfile.read(io.BytesIO(data), dtype="int16")
    assert np.sqrt(np.mean((audio / 32768.0) ** 2)) > 0.02  # speech, not silence
    return audio
