"""Shared test helpers: a real server in a thread or a subprocess, and small fakes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dialogue_tts.engine import CancelToken, Engine, SynthesisRequest, VoiceCatalog, VoiceInfo
from dialogue_tts.messages import Event
from dialogue_tts.server import Server, ServerConfig
from dialogue_tts.timings import Piece

REPO = Path(__file__).resolve().parent.parent
REQUIRE_ENGINES_ENV = "DIALOGUE_TTS_REQUIRE_ENGINES"
"""Set (or CI set): a test whose engine (Godot, Ren'Py, Chromium) is missing fails instead of
skipping, so that a CI machine without them cannot pass with no binding tested."""


def engines_required() -> bool:
    return any(
        os.environ.get(name, "").lower() not in ("", "0", "false")
        for name in (REQUIRE_ENGINES_ENV, "CI")
    )


def engine_missing(reason: str) -> None:
    """Skips the test, or fails it where engines are required."""
    if engines_required():
        pytest.fail(f"{reason} ({REQUIRE_ENGINES_ENV} or CI is set, so this fails)")
    pytest.skip(reason)


def needs_engine(available: bool, reason: str) -> pytest.MarkDecorator:
    """Marks a test that needs an engine: conftest.py skips it, or fails it where engines
    are required, when ``available`` is false."""
    return pytest.mark.engine(available=available, reason=reason)


KOKORO_DIR_ENV = "DIALOGUE_TTS_KOKORO_DIR"


def kokoro_dir() -> Path:
    """The folder of Kokoro-82M's model and voice packs (``.ci/kokoro-assets`` makes it);
    without it the test skips, or fails where engines are required."""
    folder = os.environ.get(KOKORO_DIR_ENV)
    if not folder or not Path(folder).is_dir():
        engine_missing(f"no Kokoro files: run .ci/kokoro-assets and set {KOKORO_DIR_ENV}")
    return Path(str(folder))


COMMAND = [sys.executable, "-m", "dialogue_tts"]
"""The dialogue-tts command, as the tests run it."""


def run_command(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``dialogue-tts ARGS`` to its end; its output as text."""
    return subprocess.run(
        [*COMMAND, *map(str, args)], capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


CORPUS = REPO / "tests" / "data"
VECTORS: dict[str, Any] = json.loads((REPO / "protocol" / "vectors.json").read_text("utf-8"))


def from_json(value: Any) -> Any:
    """A vectors.json message with its {"$bin": hex} values turned into bytes."""
    if isinstance(value, dict):
        if set(value) == {"$bin"}:
            return bytes.fromhex(value["$bin"])
        return {key: from_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [from_json(item) for item in value]
    return value


class ServerThread:
    """A real server, with the real bundled voice, on its own event loop in a thread."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        workers: int | None = None,
        voices_dir: Path | None = None,
        catalog: VoiceCatalog | None = None,
    ) -> None:
        """``catalog`` replaces the one made from ``voices_dir`` (other voice families)."""
        self.config = config or ServerConfig(port=0)
        self.workers = workers
        self.voices_dir = voices_dir
        self.catalog = catalog
        self.loop = _new_loop()
        self.server: Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="test-server", daemon=True)

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            catalog = self.catalog or VoiceCatalog(self.voices_dir)
            engine = Engine(catalog, workers=self.workers)
            self.server = Server(engine, self.config)
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()

    def call(self, function: Any) -> Any:
        """Run ``function()`` on the server's loop and return its result."""
        future: Any = asyncio.run_coroutine_threadsafe(_call(function), self.loop)
        return future.result(30)

    async def wait_for_connections(self, at_most: int) -> None:
        """Wait until the server holds at most ``at_most`` connections.

        A client's close reaches the server a little later; tests that count connections
        against ``max_connections`` wait here instead of racing the previous test's teardown.
        """
        async with asyncio.timeout(10):
            # The count lives on the server's loop in another thread: polling is the way.
            while self.call(lambda: len(self.server.handlers)) > at_most:  # noqa: ASYNC110
                await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(30)
            self.server.engine.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(30)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where the server would run on it (see cli.run_async), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


async def _call(function: Any) -> Any:
    return function()


@contextlib.contextmanager
def server_process(
    *args: str, env: dict[str, str] | None = None, log_path: Path | None = None
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`dialogue-tts serve --port 0 ARGS` as a subprocess; yields (port, process).

    Its output goes to ``log_path`` (default: a temporary file), which callers may read.
    """
    with contextlib.ExitStack() as stack:
        if log_path is None:
            log_path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*COMMAND, "serve", "--port", "0", *args],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not (match := re.search(rb"listening on [\d.]+:(\d+)", log_path.read_bytes())):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the server did not start:\n" + log_path.read_text())
                time.sleep(0.05)
            yield int(match.group(1)), process
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()


RENPY_CLIENT = REPO / "integrations" / "renpy" / "game" / "dialogue_tts" / "dialogue_tts_client.py"


def load_renpy_client(module_name: str = "dialogue_tts_client") -> Any:
    """The Ren'Py binding's pure-Python client module (it imports nothing of Ren'Py)."""
    spec = importlib.util.spec_from_file_location(module_name, RENPY_CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # keep the binding clean
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


def check_invariants(events: list[Any], queued_lines: set[Any]) -> None:
    """The guarantees of PROTOCOL.md that hold for any sequence of requests."""
    finished_count: dict[Any, int] = defaultdict(int)
    started: set[Any] = set()
    seqs: dict[Any, list[int]] = defaultdict(list)
    samples: dict[Any, int] = defaultdict(int)
    for event in events:
        if event.TYPE == "started":
            assert event.line not in started and finished_count[event.line] == 0
            started.add(event.line)
        elif event.TYPE == "audio":
            assert event.line in started, "audio before started"
            assert finished_count[event.line] == 0, "audio after finished"
            seqs[event.line].append(event.seq)
            samples[event.line] += len(event.data) // 2
        elif event.TYPE == "finished":
            finished_count[event.line] += 1
            assert event.samples == samples[event.line]
            assert event.complete or event.status != "done"
    assert set(finished_count) == queued_lines
    assert all(count == 1 for count in finished_count.values())
    assert all(seq == list(range(len(seq))) for seq in seqs.values())


# --- fakes for unit tests of the queues -----------------------------------------------------


@dataclass
class FakeCatalog:
    default_voice: str = "fake"
    sample_rate: int = 1000

    def info(self, name: str) -> VoiceInfo:
        from dialogue_tts.engine import UnknownVoice

        if name not in ("fake", "broken"):
            raise UnknownVoice(name)
        return VoiceInfo(name=name, language="xx", sample_rate=self.sample_rate, speakers=[])


@dataclass
class FakeEngine:
    """Each word of the text becomes ``samples_per_word`` samples, produced after ``delay``
    seconds per sentence ("." ends one). Voice "broken" fails mid-line."""

    delay: float = 0.0
    samples_per_word: int = 100
    catalog: FakeCatalog = field(default_factory=FakeCatalog)

    async def stream(
        self,
        request: SynthesisRequest,
        cancel: CancelToken,
        priority: Any = None,
        on_fallback: Any = None,
    ) -> AsyncIterator[np.ndarray]:
        from dialogue_tts.engine import SynthesisError

        text = " ".join(part for part in request.parts if isinstance(part, str))
        for index, sentence in enumerate(s for s in text.split(".") if s.strip()):
            await asyncio.sleep(self.delay)
            cancel.raise_if_cancelled()
            if request.voice == "broken" and index == 1:
                raise SynthesisError("the broken voice broke")
            samples = len(sentence.split()) * self.samples_per_word
            yield Piece(np.full(samples, 0.25, dtype=np.float32))


class RecordingOutbox:
    """Collects what the queues send; ``wait_for`` waits for an event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def send(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def drain(self) -> None:
        await asyncio.sleep(0)

    async def wait_for(self, predicate: Any) -> Event:
        """The first event matching ``predicate``; fails after 60 s rather than hang."""
        async with asyncio.timeout(60):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                self._changed.clear()
                await self._changed.wait()

    def of_type(self, type_name: str) -> list[Any]:
        return [event for event in self.events if type_name == event.TYPE]
