"""The claim script against a real Redis: a job past its deadline ends `expired` there, atomically, uncalled."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.jobs.record import NewJob, new_job_id
from llmq.worker.jobs.store import JobStore

LEASE_S = 30.0
PARTITION = redis_keys.app_unfinished("a")  # the test jobs' partition of the index of unfinished jobs


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/6", decode_responses=True)
    client.flushdb()  # db 6 belongs to this test module alone
    yield JobStore(client, 3600)
    client.close()


def a_job(store: JobStore, status: str = "queued", deadline: float | None = None, **fields: str) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}", environment="test",
                 priority="high", max_attempts=3, created_at=time.time(), app_id="a", deadline=deadline)
    store.redis.hset(redis_keys.job(job.id), mapping={**job.fields, "status": status, "quota_set": PARTITION, **fields})
    store.redis.zadd(PARTITION, {job.id: job.created_at})
    if deadline is not None:
        store.redis.zadd(redis_keys.DEADLINES, {job.id: deadline})
    return job.id


@pytest.mark.parametrize(
    ("status", "fields", "attempts"),
    [
        ("queued", {}, []),
        ("retrying", {"attempt_count": "1", "attempts": json.dumps({"n": 1, "outcome": "http_500"})}, ["http_500"]),
        # Its worker was lost mid-call: that attempt is told, and no other starts.
        ("running", {"attempt_count": "1", "lease_until": "1", "attempt_started_at": "1"}, ["worker_lost"]),
    ],
)
def test_a_job_past_its_deadline_is_expired_by_its_claim(
    store: JobStore, status: str, fields: dict[str, str], attempts: list[str]
) -> None:
    deadline = time.time() - 1
    job_id = a_job(store, status, deadline, watched="0,0", **fields)
    claim = store.claim(job_id, LEASE_S)
    assert claim.state == "expired"
    job = store.get(job_id)
    assert job is not None
    assert job["status"] == "expired"
    assert job["error"]["type"] == "deadline_exceeded"
    assert [a["outcome"] for a in job["attempts"]] == attempts
    assert "next_attempt_at" not in job
    assert store.redis.zscore(PARTITION, job_id) is None
    assert store.redis.zscore(redis_keys.DEADLINES, job_id) is None
    (_, last), = store.redis.xrevrange(redis_keys.job_events(job_id), count=1)
    assert json.loads(last["e"])["status"] == "expired"
    assert store.claim(job_id, LEASE_S).state == "finished"


def test_a_job_before_its_deadline_is_claimed_with_it(store: JobStore) -> None:
    deadline = time.time() + 60
    job_id = a_job(store, deadline=deadline)
    claim = store.claim(job_id, LEASE_S)
    assert claim.state == "claimed"
    assert claim.deadline == pytest.approx(deadline)
    assert store.claim(a_job(store), LEASE_S).deadline is None


def test_finishing_takes_the_job_out_of_the_deadline_index(store: JobStore) -> None:
    job_id = a_job(store, deadline=time.time() + 60)
    store.claim(job_id, LEASE_S)
    assert store.finish(job_id, "succeeded", None, result_json="{}")
    assert store.redis.zscore(redis_keys.DEADLINES, job_id) is None
