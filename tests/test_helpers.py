"""The test suite's own rule for engine tests: without an engine they skip on a developer's
machine, and fail where engines are required (CI), so that CI cannot pass untested."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import pytest_runtest_setup
from helpers import REQUIRE_ENGINES_ENV, needs_engine


class _Item:
    """Just enough of a pytest item for the setup hook: its markers."""

    def __init__(self, *marks: pytest.MarkDecorator) -> None:
        self._marks = [mark.mark for mark in marks]

    def iter_markers(self, name: str) -> Any:
        return (mark for mark in self._marks if mark.name == name)


@pytest.mark.parametrize("ci", ["", "false", "0"])
def test_a_missing_engine_skips_on_a_developer_machine(
    monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.delenv(REQUIRE_ENGINES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no godot here"):
        pytest_runtest_setup(_Item(needs_engine(False, "no godot here")))  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "value"), [(REQUIRE_ENGINES_ENV, "1"), ("CI", "true")])
def test_a_missing_engine_fails_where_engines_are_required(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.delenv(REQUIRE_ENGINES_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(pytest.fail.Exception, match="no renpy here"):
        pytest_runtest_setup(_Item(needs_engine(False, "no renpy here")))  # type: ignore[arg-type]
    pytest_runtest_setup(_Item(needs_engine(True, "installed")))  # type: ignore[arg-type]
