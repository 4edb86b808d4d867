from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from helpers import ServerThread, engine_missing

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


@pytest.fixture
async def client(live_server: ServerThread) -> AsyncIterator[Client]:
    """A client of the session's server, connected and welcomed, closed after the test."""
    async with await Client.connect(port=live_server.port, client_name="test") as connected:
        yield connected


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("engine"):
        if not mark.kwargs["available"]:
            engine_missing(mark.kwargs["reason"])
