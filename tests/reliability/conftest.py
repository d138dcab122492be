"""Reliability suite: stacks of its own, and the figures each test measured, printed at the end of the run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack

FIGURES: list[dict[str, Any]] = []


@pytest.fixture
def record_figures() -> Callable[..., None]:
    def record(scenario: str, **figures: Any) -> None:
        FIGURES.append({"scenario": scenario, **figures})

    return record


@pytest.fixture
def make_stack(log_dir: Path) -> Iterator[Callable[..., Stack]]:
    """Stacks started by a test and stopped after it, whatever happens."""
    started: list[Stack] = []

    def make(redis_url: str, upstream_url: str, name: str, **overrides: str) -> Stack:
        stack = Stack(redis_url, upstream_url, log_dir / name, **overrides)
        started.append(stack)
        return stack

    yield make
    for stack in started:
        stack.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("reliability figures")
        for row in FIGURES:
            terminalreporter.write_line(json.dumps(row))
