"""Limits shared by all workers, seen from the proxy's side: two real workers, one mock proxy.

This module owns its stack (Redis db 8, also its broker) with limits set for its own model names;
the shared stack runs without any.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.stack import OTHER_KEY, MockProxy, Stack, chat, eventually, submit, wait_finished, wait_status

RUN = uuid.uuid4().hex[:8]
CONCURRENCY_MODEL = f"flow-concurrency-{RUN}"
RPM_MODEL = f"flow-rpm-{RUN}"
COOLDOWN_MODEL = f"flow-cooldown-{RUN}"


@pytest.fixture(scope="module")
def limited(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    redis.Redis.from_url(url).flushdb()
    running = Stack(
        url, mock_proxy.url, log_dir / "flow-control", LLMQ_BROKER_URL=url,
        LLMQ_MODEL_CONCURRENCY=f"{CONCURRENCY_MODEL}=2", LLMQ_MODEL_RPM=f"{RPM_MODEL}=120",
        LLMQ_COOLDOWN_ON_429="true",
    )
    try:
        running.start_api()
        running.start_worker()
        running.start_worker()
        yield running
    finally:
        running.stop()


@pytest.fixture(autouse=True)
def no_leftover_limits(limited: Stack) -> None:
    """Each test starts with no slot, cell or cooldown left by another."""
    for key in limited.redis.scan_iter("llmq:flow:*"):
        limited.redis.delete(key)


def arrivals(mock_proxy: MockProxy, model: str) -> list[float]:
    return sorted(call["at"] for call in mock_proxy.calls(model))


def test_model_concurrency_holds_across_two_workers(
    limited: Stack, mock_proxy: MockProxy, redis_server: RedisServer
) -> None:
    mock_proxy.script(CONCURRENCY_MODEL, *[{"kind": "ok", "latency_ms": 1000}] * 8)
    with limited.client() as client:
        ids = [submit(client, chat(CONCURRENCY_MODEL, f"job {n}"))["id"] for n in range(8)]
        jobs = [wait_finished(client, job_id, timeout_s=90) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 8
    assert [len(job["attempts"]) for job in jobs] == [1] * 8  # waiting spent no attempt
    at = arrivals(mock_proxy, CONCURRENCY_MODEL)
    assert len(at) == 8
    # Each call lasts 1 s at the mock: a third arrival within 0.95 s would mean three in flight.
    for n, now in enumerate(at):
        assert sum(1 for earlier in at[:n + 1] if now - earlier < 0.95) <= 2, at
    assert at[-1] - at[0] >= 2.9  # eight 1-second calls, two at a time
    # Every slot was given back; the shared stack never saw a limit.
    slots = redis_keys.flow("concurrency", "model", CONCURRENCY_MODEL)
    eventually(lambda: limited.redis.zcard(slots) == 0, 5, "every concurrency slot to be given back")
    assert limited.redis.zcard(slots) == 0
    assert not redis.Redis.from_url(redis_server.url).keys("llmq:flow:*")


def test_model_rpm_spaces_calls_evenly(limited: Stack, mock_proxy: MockProxy) -> None:
    mock_proxy.script(RPM_MODEL, *[{"kind": "ok"}] * 6)
    with limited.client() as client:
        ids = [submit(client, chat(RPM_MODEL, f"job {n}"))["id"] for n in range(6)]
        jobs = [wait_finished(client, job_id, timeout_s=60) for job_id in ids]
    assert [job["status"] for job in jobs] == ["succeeded"] * 6
    assert [len(job["attempts"]) for job in jobs] == [1] * 6
    at = arrivals(mock_proxy, RPM_MODEL)
    gaps = [later - earlier for earlier, later in pairwise(at)]
    assert len(at) == 6 and min(gaps) >= 0.4, gaps  # 120 per minute: one every 0.5 s


def test_429_pauses_the_model_for_its_retry_after(limited: Stack, mock_proxy: MockProxy) -> None:
    mock_proxy.script(COOLDOWN_MODEL, {"kind": "status", "status": 429, "headers": {"Retry-After": "2"}},
                      *[{"kind": "ok"}] * 5)
    with limited.client(OTHER_KEY) as client:
        first = submit(client, chat(COOLDOWN_MODEL, "first"))["id"]
        # Retrying means the 429 came back and the cooldown is recorded; the others arrive during it.
        wait_status(client, first, "retrying")
        others = [submit(client, chat(COOLDOWN_MODEL, f"job {n}"))["id"] for n in range(4)]
        jobs = [wait_finished(client, job_id, timeout_s=60) for job_id in [first, *others]]
    assert [job["status"] for job in jobs] == ["succeeded"] * 5
    assert [len(job["attempts"]) for job in jobs] == [2, 1, 1, 1, 1]
    calls = sorted(mock_proxy.calls(COOLDOWN_MODEL), key=lambda call: call["at"])
    assert calls[0]["status"] == 429 and len(calls) == 6
    too_soon = [call["at"] - calls[0]["at"] for call in calls[1:] if call["at"] < calls[0]["at"] + 1.9]
    assert not too_soon, f"calls {too_soon} s after the 429, within its Retry-After of 2 s"
