"""Deadlines through real processes: a job still waiting at its deadline ends `expired` and is never called.

These tests own their stack (Redis db 4 or 5): one worker with a single slot, so a slow job holds the
queue while another job's deadline passes behind it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.brokers import BROKERS, rabbitmq_vhost
from tests.e2e.test_live_progress import kinds, read_events
from tests.receiver import Receiver
from tests.stack import WEBHOOK_SECRET, MockProxy, Stack, chat, eventually, submit, wait_finished, wait_status

RESULT_TTL_S = 3600


@pytest.fixture(scope="module", params=BROKERS)
def own_stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path
) -> Iterator[Stack]:
    amqp = request.param == "amqp"
    url = redis_server.url.rsplit("/", 1)[0] + ("/5" if amqp else "/4")
    with contextlib.ExitStack() as cleanup:
        broker = cleanup.enter_context(rabbitmq_vhost()) if amqp else url
        running = Stack(url, mock_proxy.url, log_dir / f"deadlines-{request.param}", LLMQ_BROKER_URL=broker,
                        LLMQ_WORKER_CONCURRENCY="1", LLMQ_DEADLINE_CHECK_S="0.5",
                        LLMQ_RESULT_TTL_S=str(RESULT_TTL_S))
        cleanup.callback(running.stop)
        running.start_api()
        running.start_worker()
        yield running


def rfc3339(seconds_from_now: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds_from_now)).isoformat()


def test_a_deadline_passing_in_the_queue_expires_the_job_uncalled(
    own_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    slow = model + "-slow"
    mock_proxy.script(slow, {"kind": "ok", "latency_ms": 5000})
    with Receiver() as receiver, own_stack.client() as client:
        # The worker's one slot is taken by a slow call: the next job waits in the queue.
        blocker = submit(client, chat(slow))["id"]
        wait_status(client, blocker, "running")
        deadline = rfc3339(1.0)
        accepted = submit(client, chat(model), deadline=deadline, callback_url=receiver.url)
        assert datetime.fromisoformat(accepted["deadline"]) == datetime.fromisoformat(deadline)
        job = wait_finished(client, accepted["id"], timeout_s=30)
        assert job["status"] == "expired"
        # It ended while the slow call still held the only slot: the sweep, not the worker's claim, ended it.
        assert client.get(f"/v1/jobs/{blocker}").json()["status"] == "running"
        assert wait_finished(client, blocker)["status"] == "succeeded"
        eventually(lambda: receiver.received, 20, "the job.expired webhook")
        # The queued message, taken once the slot was free, found nothing to do.
        own_stack.wait_all_finished(10)
    assert job["attempts"] == []
    assert job["error"]["type"] == "deadline_exceeded"
    assert job["finished_at"] >= job["deadline"]
    assert mock_proxy.calls(model) == []
    assert not own_stack.redis.zscore(redis_keys.DEADLINES, job["id"])
    hit = receiver.received[0]
    event = Webhook(WEBHOOK_SECRET).verify(hit.body, hit.headers)  # raises if the signature is wrong
    assert event["type"] == "job.expired"
    assert event["data"]["status"] == "expired" and event["data"]["id"] == job["id"]


def test_a_retry_that_would_start_after_the_deadline_does_not_start(
    own_stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 503, "headers": {"Retry-After": "4"}})
    with own_stack.client() as client:
        job_id = submit(client, chat(model), deadline=rfc3339(2.5), max_attempts=3)["id"]
        events = read_events(client, job_id)  # followed live; the stream ends after its terminal event
        job = wait_finished(client, job_id, timeout_s=30)
    assert kinds(events) == ["queued", "running", "expired"]
    assert events[-1].data["error"]["status_code"] == 503
    assert job["status"] == "expired"
    assert [a["outcome"] for a in job["attempts"]] == ["http_503"]
    assert job["error"]["type"] == "http_status" and job["error"]["status_code"] == 503
    assert len(mock_proxy.calls(model)) == 1


@pytest.mark.parametrize(
    ("deadline", "says"),
    [
        ("2020-01-01T00:00:00Z", "in the past"),
        ("2030-01-01T00:00:00", "timezone"),
        ("next tuesday", "datetime"),
        (12, "RFC 3339"),
        ("beyond", "LLMQ_RESULT_TTL_S"),
    ],
)
def test_a_bad_deadline_is_refused_with_the_reason(own_stack: Stack, model: str, deadline: object, says: str) -> None:
    if deadline == "beyond":
        deadline = rfc3339(RESULT_TTL_S + 600)
    body = {"request": chat(model), "deadline": deadline}
    with own_stack.client() as client:
        single = client.post("/v1/jobs", json=body)
        batch = client.post("/v1/jobs/batch", json={"jobs": [body, {"request": chat(model)}]})
    assert single.status_code == 422, single.text
    assert says in single.json()["error"]["message"] + str(single.json()["error"].get("fields"))
    assert batch.status_code == 202
    first, second = batch.json()["jobs"]
    assert says in first["error"]["message"]
    assert second["status"] == "queued"


def test_a_deadline_in_a_batch_is_kept(own_stack: Stack, model: str) -> None:
    deadline = rfc3339(600)
    with own_stack.client() as client:
        answer = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model), "deadline": deadline}]})
        job = client.get(f"/v1/jobs/{answer.json()['jobs'][0]['id']}").json()
        wait_finished(client, job["id"])
    assert datetime.fromisoformat(job["deadline"]) == datetime.fromisoformat(deadline)
    assert abs(float(own_stack.redis.hget(redis_keys.job(job["id"]), "deadline") or 0)
               - datetime.fromisoformat(deadline).timestamp()) < 0.001
    assert time.time() < datetime.fromisoformat(deadline).timestamp()
