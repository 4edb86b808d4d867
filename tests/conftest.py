from __future__ import annotations

from collections.abc import Iterator

import pytest
from helpers import ServerThread


@pytest.fixture(scope="session")
def live_server() -> Iterator[ServerThread]:
    """One real server with the bundled voice for the whole session (the voice loads once)."""
    server = ServerThread().start()
    yield server
    server.stop()
