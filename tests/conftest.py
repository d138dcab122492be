"""Shared fixtures: a private Redis, the mock proxy and an llmq stack, all real processes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The test process imports the worker's modules (Celery app, settings) as a developer's shell would; the
# stacks it starts get full settings of their own (tests.stack.test_env).
os.environ.setdefault("LLMQ_DEV_MODE", "1")

from llmq.devstack.processes import ManagedProcess, flower_process, mock_process
from llmq.devstack.redis_server import RedisServer, free_port
from llmq.devstack.s3_server import S3Server
from tests.brokers import BROKERS, rabbitmq_vhost
from tests.flower import FLOWER_AUTH
from tests.stack import LISTED_APP_ID, LISTED_MODEL, MockProxy, Stack


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def s3_server(log_dir: Path) -> Iterator[S3Server]:
    """An S3-compatible server (moto) on loopback; each test makes a bucket of its own."""
    with S3Server(log_dir / "s3.log") as server:
        yield server


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
def broker_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """The broker of the shared stack: each end-to-end test runs once on Redis and once on RabbitMQ."""
    if request.param == "amqp":
        with rabbitmq_vhost() as url:
            yield url
    else:
        yield redis_server.url


@pytest.fixture(scope="session")
def stack(broker_url: str, redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    """API and one worker, shared by the end-to-end tests that can share them (job records in db 0 or 2)."""
    amqp = broker_url.startswith("amqp://")
    records = redis_server.url.rsplit("/", 1)[0] + ("/2" if amqp else "/0")
    running = Stack(records, mock_proxy.url, log_dir / ("main-amqp" if amqp else "main"), LLMQ_BROKER_URL=broker_url,
                    LLMQ_WORKER_METRICS_PORT=str(free_port()), LLMQ_METRICS_MODELS=LISTED_MODEL,
                    LLMQ_METRICS_APP_IDS=LISTED_APP_ID)
    try:
        running.start_api()
        running.start_worker()
        yield running
    finally:
        running.stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "broker_url" in metafunc.fixturenames:
        metafunc.parametrize("broker_url", BROKERS, indirect=True, scope="session")


@pytest.fixture(scope="session")
def flower(stack: Stack, log_dir: Path) -> Iterator[str]:
    """Flower on the shared stack's broker, behind basic auth, as the documented setup runs it."""
    port = free_port()
    env = {**stack.env, "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)}
    process: ManagedProcess = flower_process(env, port, log_dir / "flower.log").start()
    url = f"http://127.0.0.1:{port}"
    process.wait_for_http(f"{url}/healthcheck")
    yield url
    process.stop()


@pytest.fixture
def model() -> str:
    """A model name of the test's own, so the mock's scripts and call counts are the test's alone."""
    return f"test-model-{uuid.uuid4().hex[:10]}"
