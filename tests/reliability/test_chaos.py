"""1,000 jobs against a proxy that fails in every way it can: all end succeeded, none is left behind."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmq.devstack.processes import mock_process
from llmq.devstack.redis_server import RedisServer, free_port
from tests.stack import Stack, chat, unfinished_jobs

JOBS = 1000
FAULTS = {
    "--fail-500-rate": "0.30", "--rate-limit-rate": "0.10", "--retry-after-s": "1", "--timeout-rate": "0.05",
    "--hang-s": "5", "--reset-rate": "0.05", "--garbage-rate": "0.05", "--latency-ms": "20", "--seed": "7",
}


@pytest.fixture
def chaotic_proxy(log_dir: Path) -> Iterator[str]:
    port = free_port()
    args = [item for pair in FAULTS.items() for item in pair]
    process = mock_process(dict(os.environ), port, log_dir / "chaos-mock.log", *args).start()
    process.wait_for_log("mock proxy listening")
    yield f"http://127.0.0.1:{port}/openai-compatible/v1"
    process.stop()


def test_every_job_succeeds_through_chaos(
    redis_server: RedisServer, chaotic_proxy: str, make_stack: Callable[..., Stack],
    record_figures: Callable[..., None],
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    # Over half the calls fail, so a job may need many attempts: 0.55^40 leaves no room for chance. The
    # timeouts leave a loaded machine room to answer a good call (a hang still outlasts them).
    stack = make_stack(
        url, chaotic_proxy, "chaos",
        LLMQ_READ_TIMEOUT_S="2", LLMQ_CONNECT_TIMEOUT_S="2", LLMQ_RETRY_BASE_DELAY_S="0.05",
        LLMQ_RETRY_MAX_DELAY_S="0.5", LLMQ_RETRY_AFTER_CAP_S="1", LLMQ_MAX_ATTEMPTS_LIMIT="40",
        LLMQ_DEFAULT_MAX_ATTEMPTS="40", LLMQ_WORKER_CONCURRENCY="200",
    )
    stack.redis.flushdb()
    stack.start_api()
    stack.start_worker()
    started = time.monotonic()
    with stack.client() as client:
        ids: list[str] = []
        for chunk in range(0, JOBS, 500):
            body = {"jobs": [{"request": chat(f"chaos-{i}")} for i in range(chunk, chunk + 500)]}
            ids += [item["id"] for item in client.post("/v1/jobs/batch", json=body).json()["jobs"]]
        stack.wait_all_finished(240)
        elapsed = time.monotonic() - started
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]

    statuses = Counter(job["status"] for job in jobs)
    outcomes = Counter(a["outcome"] for job in jobs for a in job["attempts"])
    assert len(ids) == JOBS
    failed = [(job.get("error"), [a["outcome"] for a in job["attempts"]])
              for job in jobs if job["status"] != "succeeded"]
    assert statuses == {"succeeded": JOBS}, (statuses, failed[:3])
    assert unfinished_jobs(stack.redis) == 0, "nothing left queued, running or retrying"
    for kind in ("http_500", "http_429", "timeout", "invalid_completion", "ok"):
        assert outcomes[kind] > 0, f"the run met no {kind}: {outcomes}"
    assert outcomes["connection_error"] > 0
    record_figures("proxy chaos", jobs=JOBS, faults="30% 500, 10% 429+Retry-After, 5% hang, 5% reset, 5% garbage",
                   attempts=sum(outcomes.values()), outcomes=dict(outcomes), lost=0,
                   max_attempts_used=max(len(job["attempts"]) for job in jobs), seconds=round(elapsed, 1))
