"""Delivering a finished job's callback (`run_delivery`), as a table of cases: a real Redis, a real receiver.

Each case runs delivery steps as the task would (each step one attempt; the schedule's wait between them is
skipped), and checks each step's outcome and delay, what the receiver got, and the callback as GET shows it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis
from standardwebhooks.webhooks import Webhook

from llmq.devstack.redis_server import RedisServer, free_port
from llmq.worker import redis_keys
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs.record import NewJob, dumps, new_job_id
from llmq.worker.jobs.store import JobStore
from llmq.worker.jobs.view import job_json
from llmq.worker.proxy.client import UpstreamClient
from llmq.worker.proxy.retry_policy import RetryPolicy
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import load_settings
from llmq.worker.webhooks.callback import new_secret
from llmq.worker.webhooks.delivery import run_delivery
from tests.receiver import Receiver

DB = 4  # shared with tests/worker/test_job_runner.py: every key is a job's own
SCHEDULE = "0,5,300"  # three attempts: at once, 5 s later, 300 s after that
RETRY_DELAYS_S = (5, 300)
# The default visibility timeout (600 s) lets a task hold a delivery that is not yet due for 200 s at most: the
# 300 s wait is two looks, 200 s and then 100 s.
MAX_HOLD_S = 200
SECRET = new_secret()
VAULT = KeyVault("x" * 32)


def at_run_time(record: dict[str, str]) -> dict[str, str]:
    """"+N": N seconds after the test runs (the table is built before a long suite)."""
    return {name: repr(time.time() + float(value[1:])) if value.startswith("+") else value
            for name, value in record.items()}


@dataclass(frozen=True)
class Case:
    answers: list[int]  # the receiver's statuses, in order
    steps: list[tuple[str, float | None]]  # each step's outcome and the delay it asks of Celery
    callback_status: str  # as GET shows it afterwards
    deliveries: list[int | None]  # the status code of each delivery GET lists (None: no answer)
    record: dict[str, str] = field(default_factory=dict)  # fields that differ from a finished job's
    url: str | None = None  # None: the receiver's
    errors: list[str] = field(default_factory=list)  # the start of each delivery's error, where one is given


NOBODY = f"http://127.0.0.1:{free_port()}/hook"  # a port nobody listens on

CASES = {
    "2xx": Case([200], [("delivered", None)], "delivered", [200]),
    "204": Case([204], [("delivered", None)], "delivered", [204]),
    "410": Case([410], [("gone", None)], "gone", [410]),
    "5xx until the schedule runs out": Case(
        [503, 502, 500], [("retrying", 5), ("retrying", MAX_HOLD_S), ("failed", None)], "failed", [503, 502, 500]),
    "5xx, then 2xx": Case([500, 200], [("retrying", 5), ("delivered", None)], "delivered", [500, 200]),
    "a redirect is not followed": Case([302], [("retrying", 5)], "retrying", [302],
                                       errors=["redirect not followed"]),
    "no receiver listening": Case([], [("retrying", 5)], "retrying", [None], url=NOBODY,
                                  errors=["connection to the receiver failed: ConnectError"]),
    "a private address that is not allowed": Case([], [("refused", None)], "failed", [None],
                                                  url="http://10.0.0.1/hook", errors=["refused: callback_url"]),
    "an unreadable callback secret": Case(
        [], [("refused", None)], "failed", [None],
        record={"callback_secret_token": KeyVault("a secret since replaced").encrypt(SECRET)},
        errors=["refused: the job's callback secret cannot be decrypted"]),
    "not yet due": Case([], [("not yet due", 100)], "retrying", [],
                        record={"callback_status": "retrying", "callback_next_at": "+100"}),
    "not due for long": Case([], [("not yet due", MAX_HOLD_S)], "retrying", [],
                             record={"callback_status": "retrying", "callback_next_at": "+3000"}),
    "already delivered": Case([], [("nothing to deliver (delivered)", None)], "delivered", [],
                              record={"callback_status": "delivered"}),
    "a job not finished yet": Case([], [("nothing to deliver (pending)", None)], "pending", [],
                                   record={"status": "running"}),
}


@pytest.fixture
def rt(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    settings = load_settings(webhook_schedule_s=SCHEDULE, callback_allow="127.0.0.1", webhook_timeout_s=5)
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", decode_responses=True)
    yield Runtime(settings, client, JobStore(client, 3600), UpstreamClient(settings), VAULT, RetryPolicy())
    client.close()


def finished_job(rt: Runtime, url: str, record: dict[str, str]) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}", environment="test",
                 priority="high", max_attempts=3, created_at=time.time() - 10, app_id="a",
                 callback={"url": url}, callback_secret_token=VAULT.encrypt(SECRET))
    fields = {**job.fields, "status": "succeeded", "result": dumps({"choices": []}), "finished_at": repr(time.time()),
              **record}
    rt.redis.hset(redis_keys.job(job.id), mapping=fields)
    rt.redis.expire(redis_keys.job(job.id), 600)
    return job.id


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_delivery(rt: Runtime, case: Case) -> None:
    with Receiver() as receiver:
        receiver.statuses.extend(case.answers)
        job_id = finished_job(rt, case.url or receiver.url, at_run_time(case.record))
        try:
            steps = []
            retries = iter(RETRY_DELAYS_S)
            for _ in case.steps:
                started = time.time()
                step = run_delivery(rt, job_id)
                steps.append((step.outcome, step.again_in_s))
                fields = rt.store.fields(job_id)
                if step.outcome == "retrying":
                    # The next attempt is due after the schedule's delay; the test does not wait for it.
                    assert abs(float(fields["callback_next_at"]) - started - next(retries)) < 5
                    rt.redis.hset(redis_keys.job(job_id), "callback_next_at", repr(time.time() - 1))
            job = job_json(rt.store.fields(job_id))
        finally:
            rt.redis.delete(redis_keys.job(job_id))

    assert [outcome for outcome, _ in steps] == [outcome for outcome, _ in case.steps]
    for (_, delay), (_, expected) in zip(steps, case.steps, strict=True):
        assert (delay is None) == (expected is None)
        if delay is not None and expected is not None:
            assert expected - 60 < delay <= expected  # "not yet due" counts down from the case's making
    assert job.get("callback_status") == case.callback_status
    deliveries = job["deliveries"]
    assert [d.get("status_code") for d in deliveries] == case.deliveries
    assert [d["n"] for d in deliveries] == list(range(1, len(deliveries) + 1))
    assert len(case.errors) <= len(deliveries)
    for delivery, error in zip(deliveries, case.errors, strict=False):
        assert delivery["error"].startswith(error)
    assert len(receiver.received) == len(case.answers)
    for received in receiver.received:
        # Signed with the job's secret; the body is the job as GET shows it.
        event = json.loads(received.body)
        Webhook(SECRET).verify(received.body, received.headers)
        assert event["type"] == "job.succeeded" and event["data"]["id"] == job_id
