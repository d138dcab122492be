"""Fair turns between app ids, on real processes: the order calls start in, read off the mock proxy's call log."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.e2e.test_openai_batch import BATCH_ENV, request_line, upload, wait_batch
from tests.stack import MockProxy, Stack, chat, eventually

SLOTS = 4
CALL_MS = 100
WEIGHTED = "3201"  # weight 3 in the stack below; every other app id 1


@pytest.fixture
def fair_stack(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    """API with fair turns (every job through the ready lists), no worker yet: a test queues, then starts one."""
    url = redis_server.url.rsplit("/", 1)[0] + "/15"
    stack = Stack(url, mock_proxy.url, log_dir / f"fairness-{secrets.token_hex(3)}", LLMQ_FAIR_TURNS="true",
                  LLMQ_FAIR_DIRECT_JOBS="0", LLMQ_APP_WEIGHTS=f"{WEIGHTED}=3,*=1",
                  LLMQ_WORKER_CONCURRENCY=str(SLOTS), LLMQ_APP_MAX_UNFINISHED="10000",
                  LLMQ_UNKNOWN_APPS_MAX_UNFINISHED="10000", **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": "80"})
    stack.redis.flushdb()
    try:
        stack.start_api()
        yield stack
    finally:
        stack.stop()


def key_of(app_id: str) -> str:
    return f"{app_id}:fairness-{secrets.token_hex(6)}"


def queue(stack: Stack, key: str, model: str, count: int, priority: str = "normal") -> list[str]:
    with stack.client(key) as client:
        response = client.post("/v1/jobs/batch", json={"jobs": [
            {"request": chat(model, f"{priority} {n}"), "priority": priority} for n in range(count)]})
        assert response.status_code == 202 and response.json()["accepted"] == count, response.text
        return [job["id"] for job in response.json()["jobs"]]


def started(mock_proxy: MockProxy, *models: str) -> list[dict[str, Any]]:
    """The calls of these models, in the order they reached the proxy."""
    calls = [call for model in models for call in mock_proxy.calls(model)]
    return sorted(calls, key=lambda call: call["at"])


def slow(mock_proxy: MockProxy, model: str, count: int) -> None:
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": CALL_MS}] * count)


def test_a_small_app_starts_before_most_of_a_flood(fair_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    flood, small = f"{model}-flood", f"{model}-small"
    slow(mock_proxy, flood, 80)
    slow(mock_proxy, small, 8)
    fair_stack.start_worker()
    queue(fair_stack, key_of("3101"), flood, 80)
    eventually(lambda: len(mock_proxy.calls(flood)) >= SLOTS * 2, 30, "the flood to be running")
    queue(fair_stack, key_of("3102"), small, 8)
    fair_stack.wait_all_finished(60)
    order = [call["model"] for call in started(mock_proxy, flood, small)]
    assert len(order) == 88
    # Behind a first-in first-out queue the small app would start after all 80; here it takes every other turn.
    last_small = max(i for i, name in enumerate(order) if name == small)
    assert last_small < 40, order


def test_a_batch_api_flood_takes_turns_with_a_small_apps_jobs(
    fair_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    """A batch's lines wait in their app id's ready lists like any flood: its window (80 lines here, all fed at once)
    does not sit in the broker queue ahead of every other app id."""
    lines, small = f"{model}-lines", f"{model}-small"
    slow(mock_proxy, lines, 80)
    slow(mock_proxy, small, 8)
    fair_stack.start_worker()
    with OpenAI(api_key=key_of("3151"), base_url=f"{fair_stack.base_url}/v1") as client:
        uploaded = upload(client, [request_line(f"r{i}", lines) for i in range(80)])
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        eventually(lambda: len(mock_proxy.calls(lines)) >= SLOTS * 2, 30, "the batch's lines to be running")
        queue(fair_stack, key_of("3152"), small, 8)
        done = wait_batch(client, batch.id, timeout_s=90)
    assert done.status == "completed" and done.request_counts is not None
    assert done.request_counts.completed == 80
    order = [call["model"] for call in started(mock_proxy, lines, small)]
    assert len(order) == 88
    last_small = max(i for i, name in enumerate(order) if name == small)
    assert last_small < 40, order


def test_two_flooding_apps_weighted_3_to_1_share_turns_near_3_to_1(
    fair_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    heavy, light = f"{model}-heavy", f"{model}-light"
    queue(fair_stack, key_of(WEIGHTED), heavy, 100)
    queue(fair_stack, key_of("3202"), light, 100)
    fair_stack.start_worker()
    fair_stack.wait_all_finished(60)
    first = [call["model"] for call in started(mock_proxy, heavy, light)][:80]
    ratio = first.count(heavy) / first.count(light)
    assert 2.4 <= ratio <= 3.8, (ratio, first)


def test_priorities_order_an_apps_own_jobs_and_take_no_other_apps_turns(
    fair_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    low, high, other = f"{model}-low", f"{model}-high", f"{model}-other"
    key = key_of("3301")
    queue(fair_stack, key, low, 12, "low")
    queue(fair_stack, key, high, 8, "high")
    queue(fair_stack, key_of("3302"), other, 8, "normal")
    fair_stack.start_worker()
    fair_stack.wait_all_finished(60)
    order = [call["model"] for call in started(mock_proxy, low, high, other)]
    mine = [name for name in order if name != other]
    # The app's high jobs all start before any of its low ones, though queued after them.
    assert mine == [high] * 8 + [low] * 12, order
    # Its high jobs take its own turns, not the other app's: that one is not left behind them.
    assert order.index(other) < 8, order
    assert order.index(other) < order.index(low), order


def test_nothing_waiting_for_a_turn_is_lost_when_the_worker_or_the_api_dies(
    fair_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    jobs = 40
    slow(mock_proxy, model, jobs * 2)
    ids = queue(fair_stack, key_of("3401"), model, jobs)
    assert fair_stack.redis.zcard(redis_keys.FAIR_APPS) == 1
    # The API dies with every job in a ready list; another takes its place.
    fair_stack.api.kill()  # type: ignore[union-attr]
    fair_stack.start_api()
    fair_stack.start_worker()
    eventually(lambda: len(mock_proxy.calls(model)) >= SLOTS * 2, 30, "calls to be running")
    fair_stack.workers[-1].kill()  # calls in flight, messages in the ready lists and in the unacked set
    fair_stack.start_worker()
    fair_stack.wait_all_finished(120)
    statuses = [fair_stack.redis.hget(redis_keys.job(job_id), "status") for job_id in ids]
    assert statuses == ["succeeded"] * jobs
    calls = len(mock_proxy.calls(model))
    # At least once: only calls cut by the kill (at most the worker's slots and its taken messages) run again.
    assert jobs <= calls <= jobs + SLOTS + 10
    eventually(lambda: fair_stack.redis.zcard(redis_keys.FAIR_APPS) == 0, 10, "the drained app to leave")


def test_a_deadline_passing_while_a_job_waits_for_its_turn_expires_it_uncalled(
    fair_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    busy, late = f"{model}-busy", f"{model}-late"
    mock_proxy.script(busy, *[{"kind": "ok", "latency_ms": 500}] * 24)
    key = key_of("3501")
    queue(fair_stack, key, busy, 24, "high")  # six rounds of half a second ahead of it, in its own app's lists
    deadline = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    with fair_stack.client(key) as client:
        response = client.post("/v1/jobs", json={"request": chat(late), "deadline": deadline, "priority": "low"})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        fair_stack.start_worker()
        fair_stack.wait_all_finished(60)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "expired" and job["error"]["type"] == "deadline_exceeded"
    assert mock_proxy.calls(late) == []
