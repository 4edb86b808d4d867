"""The voice-family seam's shared pieces: sessions sized per call, and memory handed back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnxruntime
import pytest

from dialogue_tts.voices.family import Sessions
from dialogue_tts.workers import Lease, Preempted

SHRINK = "memory.enable_memory_arena_shrinkage"


class RecordingSession:
    """Stands in for an onnxruntime session: records each call's inputs and whether it
    asked the arena to shrink."""

    def __init__(self, fail_when_trimming: bool = False) -> None:
        self.calls: list[tuple[dict[str, np.ndarray], bool]] = []
        self.fail_when_trimming = fail_when_trimming

    def run(
        self, outputs: Any, inputs: Mapping[str, np.ndarray], options: onnxruntime.RunOptions
    ) -> list[np.ndarray]:
        try:
            shrinks = options.get_run_config_entry(SHRINK) == "cpu:0"
        except RuntimeError:  # not set
            shrinks = False
        if shrinks and self.fail_when_trimming:
            raise RuntimeError("terminated")
        self.calls.append((dict(inputs), shrinks))
        return [np.zeros(1, np.float32)]


def piece(length: int) -> dict[str, np.ndarray]:
    return {"ids": np.arange(length, dtype=np.int64)}


def sessions() -> tuple[Sessions, RecordingSession, RecordingSession]:
    one, two = RecordingSession(), RecordingSession()
    made = Sessions(1, one)  # type: ignore[arg-type]
    made.add(2, two)  # type: ignore[arg-type]
    return made, one, two


def test_calls_run_on_the_session_sized_for_the_lease() -> None:
    made, one, two = sessions()
    made.run(piece(5), "v", lease=Lease(2))
    made.run(piece(5), "v", lease=Lease(1))
    made.run(piece(5), "v", lease=Lease(7))  # no such size: the first session
    made.run(piece(5), "v")
    assert len(one.calls) == 3 and len(two.calls) == 1
    assert not any(shrinks for _, shrinks in one.calls + two.calls)


def test_memory_is_handed_back_by_rerunning_the_smallest_call_on_every_session() -> None:
    made, one, two = sessions()
    made.release_memory("v", Lease(1, trim=True))
    assert not one.calls and not two.calls  # nothing ran: nothing to hand back
    for length in (40, 3, 12):
        made.run(piece(length), "v", lease=Lease(1))
    made.release_memory("v", Lease(1, trim=True))
    for session in (one, two):
        inputs, shrinks = session.calls[-1]
        assert shrinks and list(inputs["ids"]) == [0, 1, 2]
    made.release_memory("v", Lease(1, trim=True))
    assert len(one.calls) == 4 and len(two.calls) == 1  # once per spell of calls


def test_a_preempted_hand_back_is_tried_again_next_time() -> None:
    failing = RecordingSession(fail_when_trimming=True)
    made = Sessions(1, failing)  # type: ignore[arg-type]
    made.run(piece(4), "v")
    lease = Lease(1, trim=True)
    lease.preempt()
    with pytest.raises(Preempted):
        made.release_memory("v", lease)
    failing.fail_when_trimming = False
    made.release_memory("v", Lease(1, trim=True))
    assert failing.calls[-1][1]  # the second try shrank the arena
