"""Priorities are queues read in order: a waiting high job starts before normal, normal before low."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from llmq.devstack.redis_server import RedisServer
from tests.stack import MockProxy, Stack, chat, submit, wait_finished


def started(job: dict) -> float:  # type: ignore[type-arg]
    return datetime.fromisoformat(job["started_at"]).timestamp()


def test_a_waiting_high_job_goes_first(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    stack = Stack(url, mock_proxy.url, log_dir / "priority", LLMQ_WORKER_CONCURRENCY="1")
    try:
        stack.redis.flushdb()
        stack.start_api()
        with stack.client() as client:
            # Queued while no worker runs: the order they are taken in is the queues' order alone.
            ids = {priority: submit(client, chat(f"{model}-{priority}"), priority=priority)["id"]
                   for priority in ("low", "normal", "high")}
            stack.start_worker()
            jobs = {priority: wait_finished(client, job_id) for priority, job_id in ids.items()}
    finally:
        stack.stop()
    assert all(job["status"] == "succeeded" for job in jobs.values())
    assert started(jobs["high"]) < started(jobs["normal"]) < started(jobs["low"])
