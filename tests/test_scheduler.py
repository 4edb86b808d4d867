"""Speaker queues against a fake engine: ordering, skip, cancel, clear, pause, limits."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from helpers import FakeEngine, RecordingOutbox, check_invariants

from dialogue_tts import errors
from dialogue_tts.errors import RemoteProtocolError
from dialogue_tts.messages import Say
from dialogue_tts.scheduler import ConnectionQueues, Limits


def make(
    delay: float = 0.0, pace: bool = False, limits: Limits | None = None
) -> tuple[ConnectionQueues, RecordingOutbox]:
    outbox = RecordingOutbox()
    queues = ConnectionQueues(
        FakeEngine(delay=delay), outbox, pace=pace, limits=limits or Limits(), chunk_samples=64
    )
    return queues, outbox


def finished(outbox: RecordingOutbox, line: Any) -> Any:
    return outbox.wait_for(lambda e: e.TYPE == "finished" and e.line == line)


async def test_lines_play_in_order_per_speaker_and_interleave() -> None:
    queues, outbox = make(delay=0.01)
    lines = []
    for index in range(3):
        for speaker in ("anna", "bert"):
            lines.append(queues.say(Say(speaker=speaker, text=f"Line {index}. Second part.")))
    assert [q.position for q in lines] == [0, 0, 1, 1, 2, 2]
    for queued in lines:
        await finished(outbox, queued.line)
    check_invariants(outbox.events, {q.line for q in lines})
    for speaker in ("anna", "bert"):
        order = [e.line for e in outbox.of_type("started") if e.speaker == speaker]
        assert order == [q.line for q in lines if q.speaker == speaker]
    # Concurrency: bert's first line started before anna's first finished.
    types = [(e.TYPE, e.speaker) for e in outbox.events]
    assert types.index(("started", "bert")) < types.index(("finished", "anna"))
    assert {e.status for e in outbox.of_type("finished")} == {"done"}
    assert all(e.samples == 400 for e in outbox.of_type("finished"))  # 4 words x 100


async def test_skip_finishes_current_then_starts_next_with_no_late_audio() -> None:
    queues, outbox = make(delay=0.05)
    first = queues.say(Say(speaker="a", text="One two. Three four. Five six. Seven."))
    second = queues.say(Say(speaker="a", text="Next line."))
    await outbox.wait_for(lambda e: e.TYPE == "audio" and e.line == first.line)
    assert queues.skip("a") == first.line
    end = outbox.events.index(next(e for e in outbox.of_type("finished") if e.line == first.line))
    assert outbox.events[end].status == "skipped"
    await finished(outbox, second.line)
    after = outbox.events[end + 1 :]
    assert all(getattr(e, "line", None) != first.line for e in after)
    assert after[0].TYPE == "started" and after[0].line == second.line
    check_invariants(outbox.events, {first.line, second.line})


async def test_skip_before_first_audio_ends_the_line_at_once() -> None:
    queues, outbox = make(delay=5.0)  # synthesis would take 5 s
    line = queues.say(Say(speaker="a", text="Slow line."))
    await outbox.wait_for(lambda e: e.TYPE == "started")
    assert queues.skip("a") == line.line
    done = await finished(outbox, line.line)
    assert (done.status, done.samples) == ("skipped", 0)
    assert queues.skip("a") is None


async def test_a_line_said_and_skipped_in_one_read_is_skipped() -> None:
    """The skip comes before the runner could start the line: that line is the one skipped
    (finished with no started), not left to play; a paused speaker's queued line is not."""
    queues, outbox = make(delay=0.05)
    line = queues.say(Say(speaker="a", text="Skipped before it started."))
    assert queues.skip("a") == line.line
    done = await finished(outbox, line.line)
    assert (done.status, done.samples) == ("skipped", 0)
    assert not [e for e in outbox.events if e.TYPE == "started"]
    queues.pause("a")
    held = queues.say(Say(speaker="a", text="Waits for resume."))
    assert queues.skip("a") is None
    queues.resume("a")
    assert (await finished(outbox, held.line)).status == "done"
    check_invariants(outbox.events, {line.line, held.line})


async def test_cancel_clear_and_interrupt() -> None:
    queues, outbox = make(delay=0.05)
    a1 = queues.say(Say(speaker="a", text="One. Two. Three."))
    a2 = queues.say(Say(speaker="a", text="Queued.", line="mine"))
    a3 = queues.say(Say(speaker="a", text="Also queued."))
    b1 = queues.say(Say(speaker="b", text="Other speaker."))
    assert a2.line == "mine"
    queues.cancel("mine")
    with pytest.raises(RemoteProtocolError) as caught:
        queues.cancel("mine")
    assert caught.value.code == errors.UNKNOWN_LINE
    await outbox.wait_for(lambda e: e.TYPE == "started" and e.line == a1.line)
    cleared = queues.clear("a")
    assert cleared == [a1.line, a3.line]
    interrupting = queues.say(Say(speaker="b", text="Interrupt!", interrupt=True))
    assert interrupting.position == 0
    await finished(outbox, interrupting.line)
    statuses = {e.line: e.status for e in outbox.of_type("finished")}
    assert statuses == {
        a1.line: "cancelled", "mine": "cancelled", a3.line: "cancelled",
        b1.line: "skipped", interrupting.line: "done",
    }  # fmt: skip
    check_invariants(outbox.events, set(statuses))


async def test_pause_holds_lines_and_resume_releases_them() -> None:
    queues, outbox = make()
    queues.pause("a")
    line = queues.say(Say(speaker="a", text="Wait for me."))
    other = queues.say(Say(speaker="b", text="I go."))
    await finished(outbox, other.line)
    assert not [e for e in outbox.events if getattr(e, "speaker", None) == "a"]
    assert queues.status()["a"] == {"current": None, "queued": [line.line], "paused": True}
    queues.resume("a")
    assert (await finished(outbox, line.line)).status == "done"


async def test_pause_all_holds_new_speakers_too() -> None:
    queues, outbox = make()
    queues.pause(None)
    line = queues.say(Say(speaker="new", text="Hello."))
    await asyncio.sleep(0.05)
    assert outbox.of_type("started") == []
    queues.resume(None)
    assert (await finished(outbox, line.line)).status == "done"


async def test_paced_line_finishes_no_earlier_than_its_audio_duration() -> None:
    queues, outbox = make(pace=True)  # fake voice: 1000 samples/s, 100 samples/word
    began = time.monotonic()
    line = queues.say(Say(speaker="a", text="one two three"))  # 0.3 s of audio
    await finished(outbox, line.line)
    assert time.monotonic() - began >= 0.3


async def test_paused_clock_stops() -> None:
    queues, outbox = make(pace=True)
    line = queues.say(Say(speaker="a", text="one two three"))  # 0.3 s
    await outbox.wait_for(lambda e: e.TYPE == "audio")
    began = time.monotonic()
    queues.pause("a")
    await asyncio.sleep(0.4)
    assert not outbox.of_type("finished")  # the clock stood still while paused
    queues.resume("a")
    await finished(outbox, line.line)
    assert time.monotonic() - began >= 0.4


async def test_voice_error_finishes_line_with_error_and_next_line_plays() -> None:
    queues, outbox = make()
    broken = queues.say(Say(speaker="a", text="First part. Second part.", voice="broken"))
    good = queues.say(Say(speaker="a", text="Fine."))
    result = await finished(outbox, broken.line)
    assert result.status == "error" and "broke" in result.message
    assert result.samples == 200  # the first sentence was sent
    assert (await finished(outbox, good.line)).status == "done"


@pytest.mark.parametrize(
    ("say", "code"),
    [
        (Say(speaker="a", text="x", voice="nobody"), errors.UNKNOWN_VOICE),
        (Say(speaker="a", text="{w=1}{b}{/b}", markup="renpy"), errors.EMPTY_TEXT),
        (Say(speaker="a", text="x" * 5001), errors.TEXT_TOO_LONG),
    ],
)
async def test_say_refusals(say: Say, code: str) -> None:
    queues, _ = make()
    with pytest.raises(RemoteProtocolError) as caught:
        queues.say(say)
    assert caught.value.code == code


async def test_limits() -> None:
    queues, outbox = make(delay=1.0, limits=Limits(max_queue=2, max_speakers=2))
    queues.say(Say(speaker="a", text="one", line=1))
    with pytest.raises(RemoteProtocolError) as in_use:
        queues.say(Say(speaker="b", text="same id", line=1))
    assert in_use.value.code == errors.LINE_IN_USE
    queues.say(Say(speaker="a", text="two"))
    with pytest.raises(RemoteProtocolError) as full:
        queues.say(Say(speaker="a", text="three"))
    assert full.value.code == errors.QUEUE_FULL
    queues.say(Say(speaker="b", text="b"))
    with pytest.raises(RemoteProtocolError) as many:
        queues.say(Say(speaker="c", text="c"))
    assert many.value.code == errors.TOO_MANY_SPEAKERS
    queues.clear("b")
    await finished(outbox, 3)
    queues.say(Say(speaker="c", text="idle b was forgotten to make room"))
    assert set(queues.speakers) == {"a", "c"}
    queues.close()


async def test_randomized_requests_keep_every_guarantee() -> None:
    rng = random.Random(20261121)
    queues, outbox = make(delay=0.002)
    queued: set[Any] = set()
    speakers = ["a", "b", "c"]
    for _ in range(400):
        action = rng.random()
        speaker = rng.choice(speakers)
        try:
            if action < 0.45:
                words = " ".join(["word"] * rng.randint(1, 6))
                reply = queues.say(
                    Say(speaker=speaker, text=f"{words}. {words}.", interrupt=rng.random() < 0.1)
                )
                queued.add(reply.line)
            elif action < 0.6:
                queues.skip(speaker)
            elif action < 0.7 and queued:
                queues.cancel(rng.choice(sorted(queued, key=str)))
            elif action < 0.75:
                queues.clear(rng.choice([speaker, None]))
            elif action < 0.8:
                queues.pause(speaker)
            elif action < 0.9:
                queues.resume(rng.choice([speaker, None]))
        except RemoteProtocolError as exc:
            assert exc.code in (errors.UNKNOWN_LINE, errors.QUEUE_FULL)
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.005]))
    queues.resume(None)
    for line in queued:
        await finished(outbox, line)
    check_invariants(outbox.events, queued)


class RecordingEngine(FakeEngine):
    """Records when each line's synthesis starts."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay=delay)
        self.started: list[str] = []

    def stream(self, request: Any, cancel: Any, priority: Any = None, **options: Any) -> Any:
        self.started.append(str(request.parts[0]))
        return super().stream(request, cancel, priority, **options)


async def test_next_line_is_synthesized_while_the_current_one_plays() -> None:
    outbox = RecordingOutbox()
    engine = RecordingEngine(delay=0.05)
    queues = ConnectionQueues(engine, outbox, pace=True, chunk_samples=64)
    first = queues.say(Say(speaker="a", text="one two three four five six"))  # 0.6 s paced
    second = queues.say(Say(speaker="a", text="next"))
    third = queues.say(Say(speaker="a", text="after"))
    await outbox.wait_for(lambda e: e.TYPE == "audio" and e.line == first.line)
    await asyncio.sleep(0.1)  # synthesis of "next" takes 0.05 s; line one plays 0.6 s
    assert engine.started == ["one two three four five six", "next"]  # one line ahead only
    assert not [e for e in outbox.events if getattr(e, "line", None) == second.line][1:]
    queues.skip("a")
    await finished(outbox, third.line)
    # Its synthesis began before the skip (asserted above); it still plays in order.
    after_skip = [e for e in outbox.events if getattr(e, "line", None) == second.line]
    assert [e.TYPE for e in after_skip[:2]] == ["started", "audio"]
    assert engine.started == ["one two three four five six", "next", "after"]
    check_invariants(outbox.events, {first.line, second.line, third.line})


async def test_a_line_skipped_after_all_its_audio_was_sent_is_complete() -> None:
    queues, outbox = make(pace=True)  # 0.5 s of audio: sent at once, then the line plays
    whole = queues.say(Say(speaker="a", text="one two three four five"))
    await outbox.wait_for(lambda e: e.TYPE == "audio" and e.line == whole.line)
    await asyncio.sleep(0.05)  # every chunk is out; the line is still playing (paced)
    queues.skip("a")
    skipped = await finished(outbox, whole.line)
    assert (skipped.status, skipped.complete, skipped.samples) == ("skipped", True, 500)

    slow, outbox = make(delay=1.0)  # its second sentence is still being synthesized
    partial = slow.say(Say(speaker="a", text="First sentence. Second sentence."))
    await outbox.wait_for(lambda e: e.TYPE == "audio" and e.line == partial.line)
    slow.skip("a")
    cut = await finished(outbox, partial.line)
    assert (cut.status, cut.complete) == ("skipped", False)


async def test_a_piece_that_comes_after_the_audio_ran_out_counts_as_one_underrun() -> None:
    # Each sentence is 100 samples (0.1 s at the fake voice's 1 kHz) and takes 0.2 s to make:
    # each later piece reaches a client whose audio of the line ran out 0.1 s before.
    slow, slow_outbox = make(delay=0.2)
    line = slow.say(Say(speaker="a", text="One. Two. Three."))
    late = await finished(slow_outbox, line.line)
    assert slow.underruns.count == 2
    assert slow.underruns.to_dict()["seconds"] >= 2 * 0.09
    # The line itself says so: never an underrun the game cannot see.
    assert late.status == "done" and late.message is not None
    assert "fell behind playback 2 time(s)" in late.message
    fast, fast_outbox = make(delay=0.0)
    line = fast.say(Say(speaker="a", text="One. Two. Three."))
    on_time = await finished(fast_outbox, line.line)
    assert fast.underruns.count == 0
    assert on_time.message is None
