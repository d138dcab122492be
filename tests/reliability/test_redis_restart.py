"""Redis restarts mid-run: the API says 503 quickly meanwhile, everyone reconnects, no accepted job is lost."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx2
import pytest

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.stack import MockProxy, Stack, chat

JOBS = 60
OUTAGE_S = 4.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


def test_redis_restart_loses_no_accepted_job(
    own_redis: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str,
    record_figures: Callable[..., None],
) -> None:
    # A message popped by a worker in the instant Redis stopped is gone from the broker (kombu's Redis
    # transport pops, then records it as unacknowledged); the sweeper publishes such a job again.
    stack = make_stack(own_redis.url, mock_proxy.url, "redis-restart", LLMQ_STUCK_AFTER_S="15",
                       LLMQ_SWEEP_INTERVAL_S="1")
    stack.start_api()
    stack.start_worker()
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 2500}] * JOBS)
    with stack.client() as client:
        body = {"jobs": [{"request": chat(model, f"job {i}")} for i in range(JOBS)]}
        ids = [item["id"] for item in client.post("/v1/jobs/batch", json=body).json()["jobs"]]
        assert len(ids) == JOBS

        own_redis.stop()  # a graceful restart: Redis writes its AOF out as it stops
        down_at = time.monotonic()
        slowest = 0.0
        for _ in range(3):
            began = time.monotonic()
            refused = client.post("/v1/jobs", json={"request": chat(model)})
            reading = client.get(f"/v1/jobs/{ids[0]}")
            ready = client.get("/readyz")
            slowest = max(slowest, time.monotonic() - began)
            assert refused.status_code == 503 and "Redis" in refused.json()["error"]["message"]
            assert reading.status_code == 503 and ready.status_code == 503
        time.sleep(max(OUTAGE_S - (time.monotonic() - down_at), 0))
        own_redis.start()
        back_at = time.monotonic()

        stack.wait_all_finished(90)
        recovered_s = time.monotonic() - back_at
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        after = client.post("/v1/jobs", json={"request": chat(model + "-after")})

    statuses = Counter(job["status"] for job in jobs)
    assert statuses == {"succeeded": JOBS}, statuses
    assert after.status_code == 202, "the API takes jobs again without a restart"
    assert slowest < 10, f"503s must come quickly, took {slowest:.1f}s"
    assert httpx2.get(f"{stack.base_url}/readyz").status_code == 200
    calls = len(mock_proxy.calls(model))
    rescued = sum(1 for job_id in ids if stack.redis.hget(redis_keys.job(job_id), "requeues"))
    record_figures("Redis restart", jobs=JOBS, outage_s=OUTAGE_S, lost=0, duplicate_calls=calls - JOBS,
                   slowest_503_s=round(slowest, 2), recovery_s=round(recovered_s, 1), appendfsync="everysec",
                   rescued_by_sweeper=rescued)
