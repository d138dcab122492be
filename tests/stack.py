"""A real llmq stack for end-to-end tests: API and workers as processes, on a private Redis."""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import redis

from llmq.devstack.processes import ManagedProcess, api_process, worker_process
from llmq.devstack.redis_server import free_port
from llmq.worker.jobs import unfinished

T = TypeVar("T")

# A key shaped like a real one, distinctive enough to grep for in every store and log.
CALLER_KEY = "7788:sk-llmq-e2e-" + "S3cr3tAppKey9f1c"
CALLER_APP_KEY = CALLER_KEY.split(":", 1)[1]
OTHER_KEY = "9911:another-callers-key"
# The one model and app id the shared stack lists for metrics (LLMQ_METRICS_MODELS, LLMQ_METRICS_APP_IDS).
LISTED_MODEL = "metrics-listed-model"
LISTED_APP_ID = CALLER_KEY.split(":", 1)[0]
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"service-wide-webhook-secret-32b!").decode()


def test_env(redis_url: str, upstream_url: str, **overrides: str) -> dict[str, str]:
    """Settings for test processes: short timeouts so retries and recovery fit in a test."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_"))}
    env.update({
        "LLMQ_DEV_MODE": "0",
        "LLMQ_SECRET": secrets.token_urlsafe(24),
        "LLMQ_REDIS_URL": redis_url,
        "LLMQ_UPSTREAM_TEST_URL": upstream_url,
        "LLMQ_UPSTREAM_PROD_URL": upstream_url,
        "LLMQ_LOG_FORMAT": "json",
        "LLMQ_CONNECT_TIMEOUT_S": "2",
        "LLMQ_READ_TIMEOUT_S": "6",
        "LLMQ_RETRY_BASE_DELAY_S": "0.2",
        "LLMQ_RETRY_MAX_DELAY_S": "1",
        "LLMQ_RETRY_AFTER_CAP_S": "5",
        "LLMQ_VISIBILITY_TIMEOUT_S": "12",
        "LLMQ_REDELIVERY_CHECK_S": "1",
        "LLMQ_WORKER_CONCURRENCY": "50",
        "LLMQ_WORKER_METRICS_PORT": "0",
        "LLMQ_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "LLMQ_WEBHOOK_SCHEDULE_S": "0,0.5,1,1,1,1,1",
        "LLMQ_WEBHOOK_TIMEOUT_S": "3",
        "LLMQ_CALLBACK_ALLOW": "localhost,127.0.0.0/8",
        # Tests share one caller key and answer 401 for it on purpose; tests/reliability/test_quotas.py sets its own.
        "LLMQ_REJECTED_KEY_BLOCK_S": "0",
    })
    env.update(overrides)
    return env


class Stack:
    def __init__(self, redis_url: str, upstream_url: str, log_dir: Path, **overrides: str) -> None:
        self.redis_url = redis_url
        # The file store of the Files and Batch API: the stack's own directory, unless a test names another.
        self.env = test_env(redis_url, upstream_url, **{"LLMQ_FILES_DIR": str(log_dir / "files"), **overrides})
        self.log_dir = log_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.api: ManagedProcess | None = None
        self.workers: list[ManagedProcess] = []
        self.redis = redis.Redis.from_url(redis_url, decode_responses=True)

    def start_api(self) -> Stack:
        self.api = api_process(self.env, self.port, self.log_dir / "api.log").start()
        self.api.wait_for_http(f"{self.base_url}/healthz")
        return self

    def start_worker(self) -> ManagedProcess:
        name = f"w{len(self.workers) + 1}"
        worker = worker_process(self.env, self.log_dir / f"{name}.log", name).start()
        worker.wait_for_log("ready.", timeout_s=60)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()
        if self.api:
            self.api.stop()
        self.redis.close()

    def client(self, key: str | None = CALLER_KEY) -> httpx2.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx2.Client(base_url=self.base_url, headers=headers, timeout=90)

    def wait_all_finished(self, timeout_s: float) -> None:
        """Until no job of this stack is queued, running or retrying."""

        def idle() -> bool:
            try:
                return unfinished_jobs(self.redis) == 0
            except redis.ConnectionError:  # the test's own connection may lag behind a restarted Redis
                return False

        eventually(idle, timeout_s, "every job to finish", interval_s=0.25)

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("*.log")))


def unfinished_jobs(client: redis.Redis) -> int:
    """Jobs queued, running or retrying in this Redis (every partition of the index of unfinished jobs)."""
    return unfinished.count(client)


def chat(model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def submit(client: httpx2.Client, request: dict[str, Any], **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"request": request, **fields})
    assert response.status_code == 202, response.text
    return response.json()  # type: ignore[no-any-return]


def wait_finished(client: httpx2.Client, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """Long-poll until the job is finished; fails the test if it does not finish in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"job {job_id} did not finish in {timeout_s}s"
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": min(remaining, 30)}).json()
        if job["status"] in ("succeeded", "failed", "cancelled", "expired"):
            return job  # type: ignore[no-any-return]


def eventually(check: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05) -> T:
    """What `check()` returns once it is truthy; fails the test, naming `what`, after `timeout_s`.

    For states that have no event to wait on (a broker's bookkeeping, another process's view); the
    job's own progress is better awaited with `wait_finished`, which long-polls."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(interval_s)


def wait_until(client: httpx2.Client, job_id: str, check: Any, timeout_s: float = 30) -> dict[str, Any]:
    """Read the job until `check(job)` holds; fails the test after `timeout_s`."""

    def matching() -> dict[str, Any] | None:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        return job if check(job) else None

    return eventually(matching, timeout_s, f"job {job_id} to meet the condition")


def wait_status(client: httpx2.Client, job_id: str, status: str, timeout_s: float = 30) -> dict[str, Any]:
    return wait_until(client, job_id, lambda job: job["status"] == status, timeout_s)


class MockProxy:
    """Talks to the mock proxy's admin API."""

    def __init__(self, url: str) -> None:
        self.root = url.split("/openai-compatible")[0]
        self.url = url
        self.http = httpx2.Client(base_url=self.root, timeout=10)

    def script(self, model: str, *steps: dict[str, Any]) -> None:
        self.http.post("/_mock/scripts", json={"model": model, "responses": list(steps)}).raise_for_status()

    def calls(self, model: str) -> list[dict[str, Any]]:
        return self.http.get("/_mock/calls", params={"model": model}).json()["calls"]  # type: ignore[no-any-return]
