"""Ties a server's life to the game that started it: ``serve --parent-pid PID`` and
``serve --exit-with-stdin`` end the server when the game is gone, a crash included.

A game starts the server as a child process and stops it when it quits; when the game is
killed or crashes, nothing stops it, so the server watches for itself. Both watches run in
daemon threads with the standard library only, on every system: the process is polled (on
Windows through a handle opened once, so a reused process id cannot fool it), and standard
input ends when the process holding its other end is gone, however it ended.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable

POLL_SECONDS = 0.1
"""How often the parent process is looked at."""
GRACE_SECONDS = 0.5
"""How long ``on_gone`` gets to close the server cleanly before the process exits anyway."""


def watch_parent(pid: int, on_gone: Callable[[], None]) -> None:
    """Call ``on_gone()`` (from another thread) once process ``pid`` has ended; then, if
    this process is still running ``GRACE_SECONDS`` later, exit it. Raises ValueError for
    a process that does not exist now."""
    alive = _liveness(pid)
    if not alive():
        raise ValueError(f"--parent-pid {pid}: no such process")
    _start(lambda: _poll_until_gone(alive), on_gone, f"parent {pid}")


def watch_stdin(on_gone: Callable[[], None]) -> None:
    """Call ``on_gone()`` once standard input ends (the parent closed it or is gone), then
    exit as ``watch_parent`` does. Whatever is written to standard input is ignored."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        raise ValueError("--exit-with-stdin: this process has no standard input")
    _start(lambda: _read_until_end(stream), on_gone, "stdin")


def _start(wait: Callable[[], None], on_gone: Callable[[], None], what: str) -> None:
    def run() -> None:
        wait()
        on_gone()
        time.sleep(GRACE_SECONDS)
        os._exit(0)  # a close that hangs must not keep an orphaned server alive

    threading.Thread(target=run, name=f"dialogue-tts watch {what}", daemon=True).start()


def _poll_until_gone(alive: Callable[[], bool]) -> None:
    while alive():
        time.sleep(POLL_SECONDS)


def _read_until_end(stream: object) -> None:
    with contextlib.suppress(OSError, ValueError):
        while stream.read1(4096):  # type: ignore[attr-defined]
            pass


def _liveness(pid: int) -> Callable[[], bool]:
    """A function that tells whether process ``pid`` still runs."""
    if sys.platform == "win32":
        return _windows_liveness(pid)
    if pid == os.getppid():
        # Our own parent: when it ends, even as a zombie nobody has reaped yet, this process
        # is handed to another parent at once, while os.kill(pid, 0) would still succeed.
        return lambda: os.getppid() == pid
    return lambda: _posix_exists(pid)


def _posix_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, as another user's process
    return True


def _windows_liveness(pid: int) -> Callable[[], bool]:
    import ctypes

    synchronize, wait_object_0 = 0x00100000, 0
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = ctypes.c_void_p
    kernel32.WaitForSingleObject.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    handle = kernel32.OpenProcess(synchronize, False, pid)
    if not handle:
        return lambda: False
    # The handle stays open for the server's life: it keeps the process object, so its id
    # cannot be reused by another process while we watch.
    return lambda: kernel32.WaitForSingleObject(handle, 0) != wait_object_0
