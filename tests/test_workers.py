"""The inference pool's order of work."""

from __future__ import annotations

import asyncio
import threading

from dialogue_tts.workers import InferencePool, Priority


async def test_most_urgent_job_runs_first_and_priority_is_read_late() -> None:
    pool = InferencePool(1)
    gate = threading.Event()
    ran: list[str] = []
    try:
        blocker = asyncio.ensure_future(pool.run(gate.wait, lambda: (Priority.URGENT, 0.0)))
        while pool.queued:  # noqa: ASYNC110 (waits for the worker thread to take the blocker)
            await asyncio.sleep(0.001)
        promoted = {"class": Priority.PREFETCH}

        def job(name: str) -> None:
            ran.append(name)

        jobs = [
            pool.run(lambda: job("background"), lambda: (Priority.BACKGROUND, 0.0)),
            pool.run(lambda: job("prefetch-becomes-urgent"), lambda: (promoted["class"], 0.0)),
            pool.run(lambda: job("current-late"), lambda: (Priority.CURRENT, 9.0)),
            pool.run(lambda: job("current-early"), lambda: (Priority.CURRENT, 1.0)),
        ]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        dropped = asyncio.ensure_future(pool.run(lambda: job("cancelled"), lambda: (0, 0.0)))
        await asyncio.sleep(0.01)
        dropped.cancel()
        promoted["class"] = Priority.URGENT  # e.g. its line just became current
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        assert ran == ["prefetch-becomes-urgent", "current-early", "current-late", "background"]
    finally:
        pool.close()


async def test_errors_reach_the_caller() -> None:
    pool = InferencePool(2)
    try:

        def fail() -> None:
            raise ValueError("boom")

        try:
            await pool.run(fail, lambda: (Priority.CURRENT, 0.0))
        except ValueError as exc:
            assert str(exc) == "boom"
        else:
            raise AssertionError("the error was lost")
    finally:
        pool.close()
