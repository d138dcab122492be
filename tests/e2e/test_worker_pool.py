"""The worker's pools on real processes: many calls wait on one thread, a warm shutdown finishes them, and task
events and acknowledgements reach Redis in batches.

Each pool gets a stack of its own (Redis db 13 and 14), with a worker of 40 slots.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.runtime.redis_transport import UNACKED_KEY
from tests.brokers import pending_messages
from tests.redis_monitor import CommandLog
from tests.stack import MockProxy, Stack, chat, eventually, submit, wait_finished

SLOTS = 40
DB_BY_POOL = {"asyncio": 13, "threads": 14}


@pytest.fixture(scope="module", params=sorted(DB_BY_POOL))
def pool_stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path
) -> Iterator[Stack]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB_BY_POOL[request.param]}"
    stack = Stack(url, mock_proxy.url, log_dir / f"pool-{request.param}", LLMQ_BROKER_URL=url,
                  LLMQ_WORKER_POOL=request.param, LLMQ_WORKER_CONCURRENCY=str(SLOTS))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(stack.stop)
        stack.start_api()
        yield stack


def hold_calls(stack: Stack, mock_proxy: MockProxy, model: str, count: int, latency_ms: int) -> list[str]:
    """Submit `count` jobs whose calls take `latency_ms` and return once all of them are in flight at the mock."""
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": latency_ms}] * count)
    with stack.client() as client:
        ids = [submit(client, chat(model, f"call {i}"))["id"] for i in range(count)]
    eventually(lambda: len(mock_proxy.calls(model)) == count, 20, f"{count} calls in flight at the mock")
    return ids


def test_calls_in_flight_cost_threads_only_in_the_threads_pool(
    pool_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    pool = pool_stack.env["LLMQ_WORKER_POOL"]
    if not pool_stack.workers:
        pool_stack.start_worker()
    ids = hold_calls(pool_stack, mock_proxy, model, SLOTS, latency_ms=3000)
    threads = psutil.Process(pool_stack.workers[-1].pid).num_threads()
    with pool_stack.client() as client:
        jobs = [wait_finished(client, job_id, timeout_s=30) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * SLOTS
    starts = sorted(datetime.fromisoformat(job["attempts"][0]["started_at"]).timestamp() for job in jobs)
    # Every call took 3 s: starts this close together mean all of them were held at once.
    assert starts[-1] - starts[0] < 2.5
    if pool == "asyncio":
        assert threads < 15, f"{threads} threads for {SLOTS} calls in flight"
    else:
        assert threads >= SLOTS, f"only {threads} threads for {SLOTS} calls in flight"


def test_warm_shutdown_finishes_the_calls_in_hand(pool_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    if not pool_stack.workers or not pool_stack.workers[-1].alive():
        pool_stack.start_worker()
    worker = pool_stack.workers[-1]
    ids = hold_calls(pool_stack, mock_proxy, model, 5, latency_ms=2000)
    os.killpg(worker.pid, signal.SIGTERM)
    assert worker.process is not None
    worker.process.wait(timeout=20)
    with pool_stack.client() as client:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
    # Finished by the stopping worker itself: one attempt each, one call each, nothing left in the broker.
    assert [job["status"] for job in jobs] == ["succeeded"] * 5
    assert [len(job["attempts"]) for job in jobs] == [1] * 5
    assert len(mock_proxy.calls(model)) == 5
    assert pending_messages(pool_stack.env["LLMQ_BROKER_URL"], pool_stack.redis_url) == 0


def task_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The events in one published kombu message: a `task.multi` batch is a list of them."""
    payload = json.loads(message["data"])
    body = json.loads(base64.b64decode(payload["body"]))
    return body if isinstance(body, list) else [body]


def test_task_events_reach_the_broker_in_batches(pool_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    last = pool_stack.workers[-1].process if pool_stack.workers else None
    if last is None or last.poll() is not None:  # the warm-shutdown test stops its worker
        pool_stack.start_worker()
    count = 30
    listener = redis.Redis.from_url(pool_stack.env["LLMQ_BROKER_URL"])
    subscription = listener.pubsub(ignore_subscribe_messages=True)
    subscription.psubscribe("*celeryev/task.*")
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 300}] * count)
    with pool_stack.client() as client:
        jobs = [{"request": chat(model, f"e{i}")} for i in range(count)]
        accepted = client.post("/v1/jobs/batch", json={"jobs": jobs})
        ids = {item["id"] for item in accepted.json()["jobs"]}
        assert [wait_finished(client, job_id)["status"] for job_id in ids] == ["succeeded"] * count

    ours: set[str] = set()
    succeeded: set[str] = set()
    publishes = 0
    deadline = time.monotonic() + 5
    while len(succeeded) < count and time.monotonic() < deadline:
        message = subscription.get_message(timeout=0.5)
        if message is None:
            continue
        events = task_events(message)
        received = {e["uuid"] for e in events if e["type"] == "task-received" and any(i in e["args"] for i in ids)}
        done = {e["uuid"] for e in events if e["type"] == "task-succeeded" and e["uuid"] in ours | received}
        ours |= received
        succeeded |= done
        publishes += bool(received or done)
    subscription.close()
    listener.close()
    # Every task's events arrive (what Flower shows), 60 of them in a few messages rather than one each.
    assert len(ours) == count and len(succeeded) == count
    assert publishes <= 15, f"{publishes} publishes for {2 * count} task events"


def test_acknowledgements_reach_redis_in_batches(pool_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    """Calls that end together are acknowledged together: a few ZREMs of the unacked set, not one per job."""
    last = pool_stack.workers[-1].process if pool_stack.workers else None
    if last is None or last.poll() is not None:  # the warm-shutdown test stops its worker
        pool_stack.start_worker()
    count = 30
    broker_url = pool_stack.env["LLMQ_BROKER_URL"]
    broker = redis.Redis.from_url(broker_url)
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 300}] * count)
    with CommandLog(broker_url) as log, pool_stack.client() as client:
        jobs = [{"request": chat(model, f"a{i}")} for i in range(count)]
        accepted = client.post("/v1/jobs/batch", json={"jobs": jobs})
        ids = [item["id"] for item in accepted.json()["jobs"]]
        assert [wait_finished(client, job_id)["status"] for job_id in ids] == ["succeeded"] * count
        eventually(lambda: broker.zcard(UNACKED_KEY) == 0, 5, "every acknowledgement recorded")
    broker.close()
    removals = [line for line in log.lines if line.upper().startswith("ZREM") and UNACKED_KEY in line]
    assert sum(line.count("delivery_tag") for line in removals) == count
    assert len(removals) <= count // 3, f"{len(removals)} ZREMs for {count} acknowledgements"
