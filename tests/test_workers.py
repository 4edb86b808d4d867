"""The inference pool's order of work, its choice of call sizes, and preemption.

The jobs here are plain functions on fake "calls": a call that is aborted through its lease
raises ``Preempted`` as the engine's ONNX calls do, so the pool's decisions are checked
without a model. Timeouts only guard against a hang.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable

import pytest

from dialogue_tts import workers
from dialogue_tts.workers import MAX_PREEMPTIONS, InferencePool, Lease, Preempted, Priority

HANG_GUARD = 30.0


def constant(priority: Priority, deadline: float = 0.0) -> Callable[[], tuple[Priority, float]]:
    return lambda: (priority, deadline)


async def started(pool: InferencePool, running: int = 1) -> None:
    """Wait until worker threads have taken ``running`` jobs."""
    await until(lambda: pool.running >= running)


async def until(condition: Callable[[], bool]) -> None:
    """Wait for something worker threads do (not an asyncio event)."""
    while not condition():  # noqa: ASYNC110
        await asyncio.sleep(0.001)


async def hold(pool: InferencePool) -> tuple[threading.Event, asyncio.Future[object]]:
    """Occupy the pool with an urgent call (not preemptible) until the returned gate is
    set, so that the jobs queued meanwhile start together, in the pool's order."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(pool.run(lambda _: gate.wait(), constant(Priority.URGENT)))
    await started(pool)
    return gate, blocker


class AbortableCall:
    """A job that blocks like a long ONNX call until it is released, or aborted through its
    lease (then it raises Preempted, and runs again later)."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.release = threading.Event()
        self.runs = 0
        self.threads: list[int] = []
        self.inside = threading.Event()

    def __call__(self, lease: Lease) -> str:
        self.runs += 1
        self.threads.append(lease.threads)
        aborted = threading.Event()
        lease.on_preempt(aborted.set)
        self.inside.set()
        try:
            while not self.release.is_set():
                if aborted.wait(0.001):
                    self.log.append(f"{self.name} aborted")
                    raise Preempted
        finally:
            self.inside.clear()
            lease.on_preempt(None)
        self.log.append(f"{self.name} done")
        return self.name


async def test_most_urgent_job_runs_first_and_priority_is_read_late() -> None:
    pool = InferencePool(1)
    ran: list[str] = []
    try:
        gate, blocker = await hold(pool)
        promoted = {"class": Priority.PREFETCH}

        def job(name: str) -> Callable[[Lease], None]:
            return lambda _lease: ran.append(name)

        jobs = [
            pool.run(job("background"), constant(Priority.BACKGROUND)),
            pool.run(job("prefetch-becomes-urgent"), lambda: (promoted["class"], 0.0)),
            pool.run(job("current-late"), constant(Priority.CURRENT, 9.0)),
            pool.run(job("current-early"), constant(Priority.CURRENT, 1.0)),
        ]
        tasks = [asyncio.ensure_future(j) for j in jobs]
        dropped = asyncio.ensure_future(pool.run(job("cancelled"), constant(Priority.URGENT)))
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

        def fail(_lease: Lease) -> None:
            raise ValueError("boom")

        try:
            await pool.run(fail, constant(Priority.CURRENT))
        except ValueError as exc:
            assert str(exc) == "boom"
        else:
            raise AssertionError("the error was lost")
    finally:
        pool.close()


async def test_a_lone_call_gets_every_core_and_many_calls_get_one_each() -> None:
    pool = InferencePool(4)
    try:
        lone = await pool.run(lambda lease: lease.threads, constant(Priority.URGENT))
        assert lone == 4
        # A lone call in no hurry gets every core too, but does not hold back what comes
        # next: a second call starts beside it (narrow) while it runs.
        gate = threading.Event()
        relaxed = asyncio.ensure_future(
            pool.run(lambda lease: (gate.wait(), lease.threads)[1], constant(Priority.CURRENT))
        )
        await started(pool)
        beside = await pool.run(lambda lease: lease.threads, constant(Priority.PREFETCH))
        gate.set()
        assert (await relaxed, beside) == (4, 1)
        # Four calls of one class at once: each narrow, all running side by side (the barrier
        # only opens with all four inside). A wide call started first holds every core, so
        # they wait for it rather than squeeze beside it.
        gate = threading.Event()
        wide = asyncio.ensure_future(
            pool.run(lambda lease: (gate.wait(), lease.threads)[1], constant(Priority.URGENT))
        )
        await started(pool)
        barrier = threading.Barrier(4, timeout=HANG_GUARD)

        def side_by_side(lease: Lease) -> int:
            barrier.wait()
            return lease.threads

        narrow = [
            asyncio.ensure_future(pool.run(side_by_side, constant(Priority.BACKGROUND)))
            for _ in range(4)
        ]
        await asyncio.sleep(0.05)
        assert pool.running == 1 and pool.queued == 4  # nothing starts beside a wide call
        gate.set()
        assert await wide == 4
        assert await asyncio.gather(*narrow) == [1, 1, 1, 1]
    finally:
        pool.close()


def test_calls_are_one_thread_or_every_core() -> None:
    for cores, counts in ((1, {1}), (2, {2, 1}), (8, {8, 1})):
        pool = InferencePool(cores)
        try:
            assert pool.thread_counts == counts  # a voice keeps one session for each
        finally:
            pool.close()


async def test_fixed_workers_and_threads_override_the_choice() -> None:
    pool = InferencePool(8, workers=3, threads=2)
    try:
        barrier = threading.Barrier(3, timeout=HANG_GUARD)

        def side_by_side(lease: Lease) -> int:
            barrier.wait()
            return lease.threads

        results = await asyncio.gather(
            *(pool.run(side_by_side, constant(Priority.CURRENT)) for _ in range(3))
        )
        assert results == [2, 2, 2]
        assert await pool.run(lambda lease: lease.threads, constant(Priority.URGENT)) == 2
    finally:
        pool.close()


async def test_an_urgent_line_aborts_background_work_and_takes_every_core() -> None:
    pool = InferencePool(4)
    log: list[str] = []
    renders = [AbortableCall(f"render{i}", log) for i in range(2)]
    try:
        gate, blocker = await hold(pool)  # until both are queued: they start together, narrow
        background = [
            asyncio.ensure_future(pool.run(call, constant(Priority.BACKGROUND))) for call in renders
        ]
        await asyncio.sleep(0.01)
        gate.set()
        await blocker
        await started(pool, 2)
        assert [call.threads for call in renders] == [[1], [1]]  # two at once: narrow

        def first_piece(lease: Lease) -> int:
            log.append("urgent done")
            for call in renders:  # the renders may finish once they are started again
                call.release.set()
            return lease.threads

        assert await pool.run(first_piece, constant(Priority.URGENT)) == 4
        assert await asyncio.gather(*background) == ["render0", "render1"]
        assert sorted(log[:2]) == ["render0 aborted", "render1 aborted"]
        assert log[2] == "urgent done"
        assert sorted(log[3:]) == ["render0 done", "render1 done"]
        assert [call.runs for call in renders] == [2, 2]
    finally:
        pool.close()


async def test_urgent_work_does_not_abort_urgent_work() -> None:
    pool = InferencePool(1)
    log: list[str] = []
    first = AbortableCall("first", log)
    try:
        running = asyncio.ensure_future(pool.run(first, constant(Priority.URGENT)))
        await started(pool)
        second = asyncio.ensure_future(
            pool.run(lambda _: log.append("second done"), constant(Priority.URGENT))
        )
        await asyncio.sleep(0.05)
        assert log == []  # the second waits for the first, which is not aborted
        first.release.set()
        await asyncio.gather(running, second)
        assert log == ["first done", "second done"]
    finally:
        pool.close()


async def test_a_job_is_aborted_a_bounded_number_of_times() -> None:
    """Under a stream of urgent lines, background work still finishes: after
    MAX_PREEMPTIONS aborts a job is left to run, and the next urgent job waits for it."""
    pool = InferencePool(1)
    log: list[str] = []
    render = AbortableCall("render", log)
    try:
        background = asyncio.ensure_future(pool.run(render, constant(Priority.BACKGROUND)))
        for index in range(MAX_PREEMPTIONS):
            await until(lambda i=index: render.runs == i + 1 and render.inside.is_set())
            await pool.run(lambda _, i=index: log.append(f"urgent{i}"), constant(Priority.URGENT))
        await until(lambda: render.runs == MAX_PREEMPTIONS + 1 and render.inside.is_set())
        last = asyncio.ensure_future(
            pool.run(lambda _: log.append("last urgent"), constant(Priority.URGENT))
        )
        await asyncio.sleep(0.1)
        assert not last.done() and render.runs == MAX_PREEMPTIONS + 1
        render.release.set()
        await asyncio.gather(background, last)
        assert log[-2:] == ["render done", "last urgent"]
        assert log.count("render aborted") == MAX_PREEMPTIONS
    finally:
        pool.close()


async def test_a_line_that_becomes_urgent_while_it_waits_aborts_prefetch() -> None:
    """Priorities move with playback: a queued current piece whose line is about to run dry
    becomes urgent while it waits, and then makes way for itself like a new line."""
    pool = InferencePool(1)
    log: list[str] = []
    prefetch = AbortableCall("prefetch", log)
    becomes = {"class": Priority.CURRENT}
    try:
        running = asyncio.ensure_future(pool.run(prefetch, constant(Priority.PREFETCH)))
        await started(pool)
        current = asyncio.ensure_future(
            pool.run(lambda _: log.append("current done"), lambda: (becomes["class"], 0.0))
        )
        await asyncio.sleep(0.1)
        assert log == []  # a current piece with audio to spare waits for the running piece
        becomes["class"] = Priority.URGENT
        await current
        prefetch.release.set()
        await running
        assert log == ["prefetch aborted", "current done", "prefetch done"]
    finally:
        pool.close()


async def test_jobs_of_one_class_start_in_order_of_need_then_of_arrival() -> None:
    """No line of a class is starved: equal need-by times start in the order they came."""
    pool = InferencePool(1)
    ran: list[str] = []
    try:
        gate, blocker = await hold(pool)
        names = ["a", "b", "c", "d"]
        tasks = [
            asyncio.ensure_future(
                pool.run(lambda _, n=name: ran.append(n), constant(Priority.CURRENT, 5.0))
            )
            for name in names
        ]
        tasks.append(
            asyncio.ensure_future(
                pool.run(lambda _: ran.append("needed first"), constant(Priority.CURRENT, 1.0))
            )
        )
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        assert ran == ["needed first", *names]
    finally:
        pool.close()


async def test_under_overload_a_new_line_starts_before_lines_that_ran_dry() -> None:
    """Its silence is the whole line; theirs is a gap. Running-dry pieces come next, earliest
    need first, then the rest."""
    pool = InferencePool(1)
    ran: list[str] = []
    try:
        gate, blocker = await hold(pool)
        jobs = [
            ("current", constant(Priority.CURRENT, 0.0)),
            ("dry-late", constant(Priority.URGENT, 2.0)),
            ("dry-early", constant(Priority.URGENT, 1.0)),
            ("new line", constant(Priority.FIRST, 5.0)),
        ]
        tasks = [
            asyncio.ensure_future(pool.run(lambda _, n=name: ran.append(n), key))
            for name, key in jobs
        ]
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(blocker, *tasks)
        assert ran == ["new line", "dry-early", "dry-late", "current"]
    finally:
        pool.close()


async def test_memory_is_handed_back_once_the_pool_has_been_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "IDLE_RELEASE_SECONDS", 0.05)
    leases: list[Lease] = []
    released = threading.Event()

    def release(lease: Lease) -> None:
        leases.append(lease)
        released.set()

    pool = InferencePool(2, release_memory=release)
    try:
        await asyncio.sleep(0.2)
        assert not leases  # nothing ran yet: nothing to hand back
        # No call the pool runs for a job pays for handing memory back, urgent or not: a
        # render in progress would give its memory back and take it again every call.
        for priority in (Priority.FIRST, Priority.CURRENT, Priority.BACKGROUND):
            assert not await pool.run(lambda lease: lease.trim, constant(priority))
        assert await asyncio.to_thread(released.wait, HANG_GUARD)
        assert len(leases) == 1 and leases[0].trim
        await asyncio.sleep(0.2)
        assert len(leases) == 1  # once per idle spell, not again while nothing runs
        released.clear()
        await pool.run(lambda _: None, constant(Priority.CURRENT))
        assert await asyncio.to_thread(released.wait, HANG_GUARD)
        assert len(leases) == 2
    finally:
        pool.close()


async def test_a_new_job_preempts_the_idle_memory_hand_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(workers, "IDLE_RELEASE_SECONDS", 0.05)
    log: list[str] = []
    hand_back = AbortableCall("hand back", log)
    pool = InferencePool(1, release_memory=hand_back)
    try:
        await pool.run(lambda _: None, constant(Priority.CURRENT))
        assert await asyncio.to_thread(hand_back.inside.wait, HANG_GUARD)
        assert await pool.run(lambda _: "line", constant(Priority.FIRST)) == "line"
        assert log[0] == "hand back aborted"
        hand_back.release.set()  # the next idle spell tries again, and finishes
        await until(lambda: "hand back done" in log)
        assert hand_back.runs == 2
    finally:
        pool.close()


def test_a_process_exits_cleanly_while_memory_is_being_handed_back() -> None:
    """The pool's threads are daemons: at exit, a hand-back under way is aborted and waited
    for, not left inside an ONNX call while the interpreter is torn down."""
    script = textwrap.dedent(
        """
        import threading, time
        from dialogue_tts import workers
        workers.IDLE_RELEASE_SECONDS = 0.01
        inside, aborted = threading.Event(), threading.Event()
        def release(lease):
            lease.on_preempt(aborted.set)
            inside.set()
            aborted.wait(30)
            time.sleep(0.2)  # still unwinding when exit begins
            print("aborted" if aborted.is_set() else "not aborted", flush=True)
        pool = workers.InferencePool(1, release_memory=release)
        pool._idle_since = time.monotonic()  # as after a call
        with pool._lock:
            pool._lock.notify_all()
        assert inside.wait(30)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "aborted"
