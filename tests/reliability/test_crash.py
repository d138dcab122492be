"""SIGKILL a worker holding hundreds of calls; every job still finishes, and only those in flight are called twice."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from llmq.devstack.redis_server import RedisServer
from tests.stack import MockProxy, Stack, chat, eventually

IN_FLIGHT = 250
SLOW_MS = 6000


def test_worker_killed_with_250_calls_in_flight(
    redis_server: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str,
    record_figures: Callable[..., None],
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/5"
    stack = make_stack(url, mock_proxy.url, "crash", LLMQ_WORKER_CONCURRENCY=str(IN_FLIGHT + 50))
    stack.redis.flushdb()
    stack.start_api()
    stack.start_worker()
    models = [f"{model}-{i}" for i in range(IN_FLIGHT)]
    for name in models:  # each job's first call hangs long enough to be cut by the kill
        mock_proxy.script(name, {"kind": "ok", "latency_ms": SLOW_MS})
    with stack.client() as client:
        response = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(name)} for name in models]})
        assert response.status_code == 202 and response.json()["accepted"] == IN_FLIGHT
        ids = [item["id"] for item in response.json()["jobs"]]

        def calls_per_model() -> Counter[str]:
            seen = mock_proxy.http.get("/_mock/calls").json()["calls"]
            return Counter(call["model"] for call in seen if call["model"] in set(models))

        eventually(lambda: len(calls_per_model()) == IN_FLIGHT, 30, "every call to reach the proxy")
        in_flight = sum(1 for job_id in ids if client.get(f"/v1/jobs/{job_id}").json()["status"] == "running")
        killed_at = time.monotonic()
        stack.workers[-1].kill()
        stack.start_worker()
        stack.wait_all_finished(120)
        recovered_s = time.monotonic() - killed_at
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]

    statuses = Counter(job["status"] for job in jobs)
    calls = calls_per_model()
    duplicates = sum(1 for name in models if calls[name] > 1)
    assert statuses == {"succeeded": IN_FLIGHT}
    assert in_flight == IN_FLIGHT
    assert all(calls[name] <= 2 for name in models), "at most one extra call, for the call that was cut"
    assert all(job["attempts"][0]["outcome"] == "worker_lost" for job in jobs if len(job["attempts"]) > 1)
    record_figures("worker SIGKILL", jobs=IN_FLIGHT, in_flight_at_kill=in_flight, lost=0,
                   duplicate_calls=duplicates, recovery_s=round(recovered_s, 1),
                   visibility_timeout_s=int(stack.env["LLMQ_VISIBILITY_TIMEOUT_S"]))
