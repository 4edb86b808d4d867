from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from helpers import ServerThread, engine_missing


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


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("engine"):
        if not mark.kwargs["available"]:
            engine_missing(mark.kwargs["reason"])
