"""A pool of inference threads that runs the most urgent job first and sizes each call to the
work waiting.

``session.run`` blocks a thread for its whole call, so the order in which queued calls start is
the order in which players hear things. Each job has a priority class and a need-by time, read
when a decision is made (a prefetched line that becomes current moves up while it waits):

- ``FIRST``: the first piece of a line just said, which the player is waiting for;
- ``URGENT``: the next piece of a current line whose client has (almost) no audio left to play;
- ``CURRENT``: later pieces of current lines, earliest playback deadline first;
- ``PREFETCH``: lines queued behind the current one;
- ``BACKGROUND``: ``prepare`` requests and whole-file renders (scenes, ``renpy-render``).

Within a class, jobs start in order of need-by time, then of submission. A line has at most
one job queued at a time, so that order is a round robin over speakers and connections.

**How many calls at once, and with how many threads.** One call with every core answers a
lone line soonest; many one-thread calls side by side get the most audio out of the machine
(onnxruntime's intra-op threads scale poorly past a few cores on these small models). So the
pool decides per call, from what is waiting: a job that starts with nothing else running or
queued is *wide* (every core); otherwise jobs run *narrow* (one thread each), as many at once
as there are cores. An urgent wide call (a line the player waits for) has the machine to
itself; a wide call in no hurry lets work that comes meanwhile start narrow beside it.

Under overload (more speakers than the cores can voice in real time), lines run dry, and a new
line still starts first: its silence is the whole line, theirs a gap. ``status`` counts the
gaps (``underruns``).

**Preemption.** An urgent job (``FIRST`` or ``URGENT``) that cannot start because less
urgent calls hold the cores aborts those calls (the engine's ``RunOptions.terminate``, about
2 ms) and takes the cores; they go back to the queue, first in their class, and start again
from the beginning of their piece. So background work, prefetch and comfortable current
lines delay a line the player is waiting for by milliseconds, not by the piece that happens
to be running. A job is aborted at most ``MAX_PREEMPTIONS`` times, so that under a stream of
urgent work every job still finishes.

**Memory.** onnxruntime's arena keeps the largest working set a session ever needed. Once the
pool has been idle ``IDLE_RELEASE_SECONDS`` after calls ran, it runs ``release_memory`` (the
engine's: each voice reruns its smallest call with the arena shrinking after it) in a slot
of its own, which any job that comes meanwhile preempts. Not after every call: a render
giving its memory back and taking it again call after call cost 12% more CPU.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import enum
import functools
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

__all__ = [
    "MAX_PREEMPTIONS",
    "InferencePool",
    "Lease",
    "Preempted",
    "Priority",
    "available_cores",
    "run_niced",
]

_T = TypeVar("_T")

WORKER_NICENESS: Final = 10
"""Added to inference threads' niceness where the OS allows it per thread (Linux)."""
MAX_PREEMPTIONS: Final = 3
"""Times one job may be aborted for a more urgent one before it is left to finish."""
PRIORITY_RECHECK_SECONDS: Final = 0.05
"""How often idle workers re-read priorities while jobs wait (they change with playback)."""
IDLE_RELEASE_SECONDS: Final = 1.0
"""Idle time after which the pool hands back the working memory its calls took."""
CLOSE_WAIT_SECONDS: Final = 5.0
"""How long ``close`` waits for an aborted memory hand-back to return (about 2 ms)."""


class Priority(enum.IntEnum):
    FIRST = 0
    URGENT = 1
    CURRENT = 2
    PREFETCH = 3
    BACKGROUND = 4

    @property
    def urgent(self) -> bool:
        """Someone is listening to silence until this runs: it may abort other work."""
        return self <= Priority.URGENT


PriorityKey = Callable[[], tuple[Priority, float]]
"""Returns (class, need-by time): smaller runs first; time in time.monotonic() seconds."""


class Preempted(Exception):
    """Raised by a job whose call was aborted through its lease; the pool runs it again."""


class Lease:
    """What a running job is given: how many threads its call may use, and a way to be
    aborted for more urgent work.

    The job registers what aborts its running call (``on_preempt``), and raises
    ``Preempted`` when the call fails after ``preempted`` was set.
    """

    def __init__(self, threads: int, trim: bool = False) -> None:
        self.threads = threads
        self.trim = trim
        """Give the session's spare working memory back after this call: set only for the
        pool's ``release_memory`` call, once it has been idle ``IDLE_RELEASE_SECONDS``, so
        the memory a busy spell took is returned when it ends, and a render in progress
        does not pay for giving it back and taking it again after every call."""
        self._lock = threading.Lock()
        self._preempted = False
        self._abort: Callable[[], None] | None = None

    @property
    def preempted(self) -> bool:
        return self._preempted

    def on_preempt(self, abort: Callable[[], None] | None) -> None:
        """Set (or clear, with None) what aborts the job's running call."""
        with self._lock:
            self._abort = abort
            if abort is not None and self._preempted:
                abort()

    def preempt(self) -> None:
        with self._lock:
            self._preempted = True
            if self._abort is not None:
                self._abort()


@dataclass(eq=False)
class _Job:
    function: Callable[[Lease], Any]
    priority: PriorityKey
    order: int
    loop: asyncio.AbstractEventLoop | None
    """The awaiting coroutine's loop and future: None for the pool's own idle call."""
    future: asyncio.Future[Any] | None = field(repr=False)
    preemptions: int = 0


@dataclass(eq=False)
class _Running:
    job: _Job
    lease: Lease
    cost: int
    """Slots it holds: all of them for a wide call, one for a narrow call."""
    urgent: bool


def available_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. under ``taskset``)."""
    process_cpu_count = getattr(os, "process_cpu_count", None)  # Python 3.13+
    if process_cpu_count is not None:
        return max(1, process_cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class InferencePool:
    """Threads running blocking calls, most urgent first, each sized to the work waiting.

    ``cores``: the cores to fill (default: those this process may use). ``workers`` (calls
    at once) and ``threads`` (onnxruntime threads per call) are fixed overrides; without
    them the pool adapts, as the module docstring says.
    """

    def __init__(
        self,
        cores: int | None = None,
        *,
        workers: int | None = None,
        threads: int | None = None,
        release_memory: Callable[[Lease], None] | None = None,
        name: str = "dialogue-tts-synth",
    ) -> None:
        self.cores = cores or available_cores()
        self.adaptive = workers is None and threads is None
        self.slots = (workers or self.cores) if not self.adaptive else self.cores
        """Calls that may run at once (each narrow call holds one slot, a wide one all)."""
        self.wide_threads = threads or self.cores
        # One thread per narrow call: two calls at once on two cores took 1.32 s on one-thread
        # sessions against 1.70 s on one two-thread session (and 11% less CPU), measured
        # interleaved; the second session costs a voice about 60 MiB.
        self.narrow_threads = threads or 1
        self._jobs: list[_Job] = []
        self._running: list[_Running] = []
        self._lock = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._release_memory = release_memory
        self._idle_since: float | None = None
        """When the last call ended, while calls ran since memory was last handed back."""
        self.preemptions = 0
        """Calls aborted for more urgent work so far."""
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(self.slots)
        ]
        self._threads.append(
            threading.Thread(target=self._watch, name=f"{name}-watch", daemon=True)
        )
        for thread in self._threads:
            thread.start()
        _OPEN_POOLS.add(self)

    @property
    def thread_counts(self) -> set[int]:
        """The thread counts calls may be given (a voice keeps one session for each)."""
        return {self.wide_threads, self.narrow_threads}

    async def run(self, function: Callable[[Lease], _T], priority: PriorityKey) -> _T:
        """Run ``function(lease)`` on a worker thread; cancelling the await drops a queued
        job (a running call is aborted by the caller's own cancel token)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        job = _Job(function, priority, next(self._order), loop, future)
        with self._lock:
            if self._closed:
                raise RuntimeError("the inference pool is closed")
            self._jobs.append(job)
            self._preempt_for_urgent()
            self._lock.notify_all()
        try:
            return await future
        except asyncio.CancelledError:
            with self._lock:
                if job in self._jobs:
                    self._jobs.remove(job)
            raise

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._jobs)

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def close(self) -> None:
        """Drop queued jobs and stop; a memory hand-back under way is aborted and waited for
        (an ONNX call still running as the interpreter exits aborts the process)."""
        with self._lock:
            self._closed = True
            for job in self._jobs:
                if job.loop is not None and job.future is not None:
                    job.loop.call_soon_threadsafe(_cancel, job.future)
            self._jobs.clear()
            for running in self._running:
                if running.job.future is None:  # the pool's own idle call
                    running.lease.preempt()
            self._lock.notify_all()
        watcher = self._threads[-1]
        if watcher is not threading.current_thread():
            watcher.join(CLOSE_WAIT_SECONDS)

    # --- scheduling (all under self._lock) ------------------------------------------------

    def _free_slots(self) -> int:
        return self.slots - sum(running.cost for running in self._running)

    def _take(self) -> _Running | None:
        """The next job to start and how, or None if nothing may start now.

        While aborted calls are still giving their cores back, nothing starts: the urgent
        job they make way for then starts on a free machine, wide, rather than squeezed.
        """
        if not self._jobs or self._free_slots() <= 0:
            return None
        if any(running.lease.preempted for running in self._running):
            return None
        keys = {id(job): _sort_key(job) for job in self._jobs}
        job = min(self._jobs, key=lambda j: keys[id(j)])
        priority = keys[id(job)][0]
        self._jobs.remove(job)
        urgent = priority.urgent
        if self.adaptive and not self._running:
            if urgent and not any(keys[id(j)][0].urgent for j in self._jobs):
                # A line the player waits for, alone: the whole machine, nothing beside it
                # (less urgent work waits for this one piece).
                return _Running(job, Lease(self.wide_threads), self.slots, urgent)
            if not self._jobs:
                # Alone but in no hurry: every core, yet work that comes meanwhile starts
                # beside it rather than waiting behind it.
                return _Running(job, Lease(self.wide_threads), 1, urgent)
        return _Running(job, Lease(self.narrow_threads), 1, urgent)

    def _preempt_for_urgent(self) -> None:
        """Abort less urgent running calls while urgent jobs wait for cores."""
        waiting = sum(_sort_key(job)[0].urgent for job in self._jobs)
        if not waiting:
            return
        victims = [
            running
            for running in self._running
            if not running.urgent
            and not running.lease.preempted
            and running.job.preemptions < MAX_PREEMPTIONS
        ]
        kept = sum(running.cost for running in self._running if running not in victims)
        # One urgent job with the machine to itself takes every core, as on an idle machine.
        wanted = self.slots if (waiting == 1 and kept == 0 and self.adaptive) else waiting
        free = self._free_slots()
        for running in sorted(victims, key=lambda r: _sort_key(r.job), reverse=True):
            if free >= wanted:
                break
            running.lease.preempt()  # the least urgent first
            free += running.cost

    def _watch(self) -> None:
        """Priorities move with time (a current line about to run dry becomes urgent), so
        while jobs wait, look again now and then for one that should abort a running call.
        Once the pool has been idle a while after calls ran, hand their memory back."""
        _lower_thread_priority()
        with self._lock:
            while not self._closed:
                self._lock.wait(self._watch_timeout())
                if self._jobs and self._running:
                    self._preempt_for_urgent()
                if self._idle_for() >= IDLE_RELEASE_SECONDS:
                    self._release_idle_memory()

    def _watch_timeout(self) -> float | None:
        if self._jobs:
            return PRIORITY_RECHECK_SECONDS
        if self._idle_since is not None and self._release_memory is not None:
            return max(IDLE_RELEASE_SECONDS - self._idle_for(), 0.0) + 0.01
        return None

    def _idle_for(self) -> float:
        """Seconds since the last call ended, if calls ran since the last hand-back and
        none runs or waits now; else 0."""
        if self._idle_since is None or self._jobs or self._running:
            return 0.0
        return time.monotonic() - self._idle_since

    def _release_idle_memory(self) -> None:
        """Run ``release_memory`` in a slot of its own (under the lock on entry and exit);
        a job that comes meanwhile may preempt it like any call in no hurry."""
        self._idle_since = None
        if self._release_memory is None:
            return
        job = _Job(self._release_memory, _idle_priority, next(self._order), None, None)
        running = _Running(job, Lease(self.narrow_threads, trim=True), 1, False)
        self._running.append(running)
        self._lock.release()
        try:
            job.function(running.lease)
        except Preempted:
            pass  # its sessions stay marked as used: the next idle spell tries again
        except Exception:  # memory not handed back is no reason to stop the watcher
            logging.getLogger(__name__).exception("handing idle memory back failed")
        finally:
            self._lock.acquire()
            self._running.remove(running)
            self._lock.notify_all()

    def _work(self) -> None:
        _lower_thread_priority()
        while True:
            with self._lock:
                while not self._closed and (taken := self._take()) is None:
                    self._lock.wait()
                if self._closed:
                    return
                assert taken is not None
                self._running.append(taken)
            job, future, loop = taken.job, taken.job.future, taken.job.loop
            assert future is not None and loop is not None  # queued jobs have both
            outcome: Callable[[], None] | None = None
            try:
                if not future.cancelled():
                    result = job.function(taken.lease)
                    outcome = functools.partial(_set_result, future, result)
            except Preempted:
                with self._lock:
                    job.preemptions += 1
                    self.preemptions += 1
                    if not self._closed and not future.cancelled():
                        self._jobs.append(job)  # keeps its order: first in its class again
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome = functools.partial(_set_exception, future, exc)
            finally:
                with self._lock:
                    self._running.remove(taken)
                    self._idle_since = time.monotonic()
                    self._lock.notify_all()
            # Only now: what the caller submits next must find this call gone.
            if outcome is not None:
                loop.call_soon_threadsafe(outcome)


_OPEN_POOLS: weakref.WeakSet[InferencePool] = weakref.WeakSet()


@atexit.register
def _close_open_pools() -> None:
    """Close every pool before the interpreter goes: their threads are daemons, and one of
    them inside an ONNX call while the interpreter is torn down aborts the process."""
    for pool in list(_OPEN_POOLS):
        pool.close()


def run_niced(function: Callable[[], _T]) -> _T:
    """Run ``function`` on a new niced thread and return its result.

    Threads inherit niceness from the thread that starts them, so an onnxruntime session
    created here has niced intra-op threads too.
    """
    result: list[_T] = []
    error: list[BaseException] = []

    def target() -> None:
        _lower_thread_priority()
        try:
            result.append(function())
        except BaseException as exc:  # re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=target, name="dialogue-tts-load")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]


def _lower_thread_priority() -> None:
    """Nice this thread (Linux: per thread), so that the event loop answering requests, and
    the game sharing the machine, always get the CPU before a synthesis does."""
    if hasattr(os, "setpriority") and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


def _idle_priority() -> tuple[Priority, float]:
    return Priority.BACKGROUND, float("inf")


def _sort_key(job: _Job) -> tuple[Priority, float, int]:
    priority, deadline = job.priority()
    return Priority(priority), deadline, job.order


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
