"""A pool of inference threads that always takes the most urgent job first.

``session.run`` blocks a thread for its whole call, so the order in which queued calls start is
the order in which players hear things. Each job has a priority class, read when a worker
becomes free (a prefetched line that becomes current moves up while it waits):

- ``URGENT``: the next piece of a current line whose client has no audio left to play;
- ``CURRENT``: later pieces of current lines, earliest playback deadline first;
- ``PREFETCH``: lines queued behind the current one;
- ``BACKGROUND``: ``prepare`` requests and whole-file renders.

Within a class, jobs start in the order they were submitted. A line has at most one job
queued at a time, so that order is a round robin over speakers and connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

__all__ = ["InferencePool", "Priority", "run_niced"]

_T = TypeVar("_T")

WORKER_NICENESS: Final = 10
"""Added to inference threads' niceness where the OS allows it per thread (Linux)."""


class Priority(enum.IntEnum):
    URGENT = 0
    CURRENT = 1
    PREFETCH = 2
    BACKGROUND = 3


PriorityKey = Callable[[], tuple[Priority, float]]
"""Returns (class, deadline): smaller runs first; deadline in time.monotonic() seconds."""


@dataclass(eq=False)
class _Job:
    function: Callable[[], Any]
    priority: PriorityKey
    order: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any] = field(repr=False)


class InferencePool:
    """``workers`` threads running blocking calls, most urgent first."""

    def __init__(self, workers: int, name: str = "dialogue-tts-synth") -> None:
        self.workers = workers
        self._jobs: list[_Job] = []
        self._lock = threading.Condition()
        self._order = itertools.count()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, function: Callable[[], _T], priority: PriorityKey) -> _T:
        """Run ``function`` on a worker thread; cancelling the await drops a queued job."""
        loop = asyncio.get_running_loop()
        job = _Job(function, priority, next(self._order), loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the inference pool is closed")
            self._jobs.append(job)
            self._lock.notify()
        try:
            return await job.future
        except asyncio.CancelledError:
            with self._lock:
                if job in self._jobs:
                    self._jobs.remove(job)
            raise

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._jobs)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for job in self._jobs:
                job.loop.call_soon_threadsafe(_cancel, job.future)
            self._jobs.clear()
            self._lock.notify_all()

    def _work(self) -> None:
        _lower_thread_priority()
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                job = min(self._jobs, key=_sort_key)
                self._jobs.remove(job)
            if job.future.cancelled():
                continue
            try:
                result = job.function()
            except BaseException as exc:  # handed to the awaiting coroutine
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
            else:
                job.loop.call_soon_threadsafe(_set_result, job.future, result)


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


def _sort_key(job: _Job) -> tuple[Priority, float, int]:
    priority, deadline = job.priority()
    return priority, deadline, job.order


def _set_result(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any]) -> None:
    future.cancel()
