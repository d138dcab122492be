"""A worker meeting a damaged record ends its job rather than handing its message back forever.

A Redis error makes the task hand the message back for another try (storage may be down); a script that fails
on a record's content would do so on every try, so the scripts read numbers that are not numbers as zero.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.jobs.record import NewJob, new_job_id
from llmq.worker.jobs.store import JobStore


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/14", decode_responses=True)
    client.flushdb()  # db 14 belongs to this test module alone
    yield JobStore(client, 3600)
    client.close()


def damaged(store: JobStore, **fields: str) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}", environment="test",
                 priority="normal", max_attempts=3, created_at=time.time(), app_id="a")
    store.redis.hset(redis_keys.job(job.id), mapping={**job.fields, **fields})
    return job.id


@pytest.mark.parametrize("fields", [
    {"attempt_count": "abc"},
    {"status": "running", "lease_until": "soon", "attempt_count": "1"},
    {"status": "running", "lease_until": "nan", "attempt_count": "x"},
])
def test_a_claim_reads_numbers_that_are_not_numbers_as_zero(store: JobStore, fields: dict[str, str]) -> None:
    claim = store.claim(damaged(store, **fields), lease_s=30)
    assert claim.state == "claimed" and claim.attempt >= 1


@pytest.mark.parametrize("fields", [
    {"status": "succeeded", "callback_status": "delivering", "callback_lease_until": "later"},
    {"status": "succeeded", "callback_status": "pending", "callback_next_at": "tomorrow"},
])
def test_a_delivery_claim_reads_numbers_that_are_not_numbers_as_zero(store: JobStore, fields: dict[str, str]) -> None:
    state, _ = store.claim_delivery(damaged(store, **fields), now=time.time(), lease_s=30)
    assert state == "claimed"
