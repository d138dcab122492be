"""The processes a scenario needs (private Redis, mock proxy, API, worker), started on loopback and always stopped."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import redis

from llmq.devstack.processes import ManagedProcess, api_process, mock_process, worker_process
from llmq.devstack.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
LOG_DIR = RESULTS_DIR / "logs"
BENCH_KEY = "4242:bench-app-key"
# Nothing listens here: scenarios without a worker never call upstream, but the settings want a URL.
UNUSED_UPSTREAM = "http://127.0.0.1:9/openai-compatible/v1"
# As ops/redis/redis.conf: room for the submission benchmark's backlog below the high-water mark.
BENCH_MAXMEMORY = "2gb"


def llmq_env(redis_url: str, upstream_url: str, concurrency: int, secret: str) -> dict[str, str]:
    """Production defaults except what a private loopback stack needs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_"))}
    env.update({
        "PYTHONPATH": str(ROOT),
        "LLMQ_SECRET": secret,
        "LLMQ_REDIS_URL": redis_url,
        "LLMQ_UPSTREAM_TEST_URL": upstream_url,
        "LLMQ_UPSTREAM_PROD_URL": upstream_url,
        "LLMQ_WORKER_CONCURRENCY": str(concurrency),
        "LLMQ_WORKER_METRICS_PORT": "0",  # other stacks on this machine may hold the default port
        "LLMQ_LOG_FORMAT": "json",
        # The submission benchmark queues some 80,000 jobs of one app id with no worker to finish them: quotas
        # would refuse most of them (tests/reliability/test_quotas.py tests those).
        "LLMQ_APP_MAX_UNFINISHED": "10000000",
        "LLMQ_UNKNOWN_APPS_MAX_UNFINISHED": "10000000",
    })
    return env


class BenchStack:
    """`with BenchStack("a-500ms") as s: s.start_mock(500); s.start_api(); s.start_worker()`."""

    def __init__(self, name: str, concurrency: int = 200) -> None:
        self.name = name
        self.concurrency = concurrency
        self.log_dir = LOG_DIR / name
        self.redis_server = RedisServer(maxmemory=BENCH_MAXMEMORY)
        self.processes: list[ManagedProcess] = []
        self.mock_url = UNUSED_UPSTREAM
        self.api_url = ""
        self.api: ManagedProcess | None = None
        self.worker: ManagedProcess | None = None  # the last one started
        self.workers: list[ManagedProcess] = []
        self.redis: redis.Redis | None = None
        self.secret = secrets.token_urlsafe(24)  # one per stack: the worker must read the API's encrypted keys

    @property
    def redis_url(self) -> str:
        return self.redis_server.url

    def env(self) -> dict[str, str]:
        return llmq_env(self.redis_url, self.mock_url, self.concurrency, self.secret)

    def start_mock(self, latency_ms: int) -> str:
        port = free_port()
        mock = mock_process({**os.environ}, port, self.log_dir / "mock.log", "--latency-ms", str(latency_ms))
        self.processes.append(mock.start())
        mock.wait_for_log("mock proxy listening")
        self.mock_url = f"http://127.0.0.1:{port}/openai-compatible/v1"
        return self.mock_url

    def start_api(self, env: dict[str, str] | None = None) -> str:
        port = free_port()
        self.api = api_process(env or self.env(), port, self.log_dir / "api.log")
        self.processes.append(self.api.start())
        self.api_url = f"http://127.0.0.1:{port}"
        self.api.wait_for_http(f"{self.api_url}/healthz")
        return self.api_url

    def start_worker(self, env: dict[str, str] | None = None, name: str = "bench") -> ManagedProcess:
        self.worker = worker_process(env or self.env(), self.log_dir / f"{name}.log", name)
        self.workers.append(self.worker)
        self.processes.append(self.worker.start())
        self.worker.wait_for_log("ready.", timeout_s=60)
        return self.worker

    def add(self, process: ManagedProcess) -> ManagedProcess:
        """Start any other process under this stack's care."""
        self.processes.append(process.start())
        return process

    def __enter__(self) -> BenchStack:
        self.redis_server.start()
        self.redis = redis.Redis.from_url(self.redis_url, decode_responses=True)
        return self

    def __exit__(self, *_: object) -> None:
        try:
            for process in reversed(self.processes):
                try:
                    process.stop()
                except Exception as err:  # one stubborn process must not leave the others running
                    print(f"bench: stopping {process.name} failed: {err}", file=sys.stderr)
                    process.kill()
        finally:
            if self.redis is not None:
                self.redis.close()
            self.redis_server.cleanup()
