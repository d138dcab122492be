"""Shared fixtures: a private Redis, the mock proxy and an llmq stack, all real processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.processes import ManagedProcess, mock_process
from devstack.redis_server import RedisServer, free_port
from tests.stack import MockProxy, Stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def mock_proxy(log_dir: Path) -> Iterator[MockProxy]:
    port = free_port()
    process: ManagedProcess = mock_process(dict(os.environ), port, log_dir / "mock.log").start()
    process.wait_for_log("mock proxy listening")
    mock = MockProxy(f"http://127.0.0.1:{port}/openai-compatible/v1")
    yield mock
    mock.http.close()
    process.stop()


@pytest.fixture(scope="session")
def stack(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    """API and one worker on Redis db 0, shared by the end-to-end tests that can share them."""
    running = Stack(redis_server.url, mock_proxy.url, log_dir / "main")
    try:
        running.start_api()
        running.start_worker()
        yield running
    finally:
        running.stop()


@pytest.fixture
def model() -> str:
    """A model name of the test's own, so the mock's scripts and call counts are the test's alone."""
    return f"test-model-{uuid.uuid4().hex[:10]}"
