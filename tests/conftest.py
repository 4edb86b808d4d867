from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from helpers import ServerThread, engine_missing
from helpers import kokoro_dir as find_kokoro_dir

from dialogue_tts.client import Client


@pytest.fixture(scope="session", autouse=True)
def private_cache_folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Commands the tests run (and their subprocesses) cache lines in a temporary folder,
    never in the user's own cache."""
    os.environ["DIALOGUE_TTS_CACHE"] = str(tmp_path_factory.mktemp("line-cache"))
    yield
    del os.environ["DIALOGUE_TTS_CACHE"]


@pytest.fixture(scope="session")
def live_server() -> Iterator[ServerThread]:
    """One real server with the bundled voice for the whole session (the voice loads once)."""
    server = ServerThread().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kokoro_dir() -> Path:
    """Kokoro-82M's model and voice packs (tests/test_kokoro.py, a Ren'Py and a web test)."""
    return find_kokoro_dir()


@pytest.fixture
async def client(live_server: ServerThread) -> AsyncIterator[Client]:
    """A client of the session's server, connected and welcomed, closed after the test."""
    async with await Client.connect(port=live_server.port, client_name="test") as connected:
        yield connected


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("engine"):
        if not mark.kwargs["available"]:
            engine_missing(mark.kwargs["reason"])
