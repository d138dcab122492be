"""Calls in flight against a real Redis: a cancel published for a job aborts its call; long calls keep their lease."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.proxy.in_flight import CallCancelled, InFlightCalls


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/9"
    client = redis.Redis.from_url(url)
    client.flushdb()  # db 9 belongs to this test module alone
    client.close()
    yield url


def running_job(url: str, job_id: str, attempt: int, lease_until: float) -> redis.Redis:
    client = redis.Redis.from_url(url, decode_responses=True)
    client.hset(redis_keys.job(job_id), mapping={"status": "running", "attempt_count": str(attempt),
                                                 "lease_until": repr(lease_until)})
    return client


def test_a_published_cancel_aborts_the_call(redis_url: str) -> None:
    async def scenario() -> None:
        calls = InFlightCalls(redis_url, lease_s=60)
        call = asyncio.ensure_future(calls.run("job_a", 1, asyncio.sleep(30, "answer")))
        await asyncio.wait_for(calls.subscribed.wait(), 5)
        publisher = redis.Redis.from_url(redis_url)
        # Pub/sub is server-wide: other test processes on this Redis may hear it too.
        assert publisher.publish(redis_keys.CANCELS_CHANNEL, "job_a") >= 1
        with pytest.raises(CallCancelled):
            await asyncio.wait_for(call, 5)
        # A cancel heard before the call starts keeps it from starting.
        publisher.publish(redis_keys.CANCELS_CHANNEL, "job_b")
        await asyncio.sleep(0.2)
        with pytest.raises(CallCancelled):
            await calls.run("job_b", 1, asyncio.sleep(30))
        assert await calls.run("job_c", 1, asyncio.sleep(0, "answer")) == "answer"
        publisher.close()
        await calls.aclose()

    asyncio.run(scenario())


def test_a_long_call_renews_its_lease_and_only_its_own(redis_url: str) -> None:
    lease_s = 0.9
    first_lease = time.time() + lease_s
    client = running_job(redis_url, "job_long", 2, first_lease)
    running_job(redis_url, "job_taken_over", 3, first_lease)  # another worker's attempt 3 holds it now

    async def scenario() -> None:
        calls = InFlightCalls(redis_url, lease_s=lease_s)
        await asyncio.gather(calls.run("job_long", 2, asyncio.sleep(2)),
                             calls.run("job_taken_over", 2, asyncio.sleep(2)))
        await calls.aclose()

    asyncio.run(scenario())
    assert float(client.hget(redis_keys.job("job_long"), "lease_until") or 0) > first_lease + 0.5
    assert float(client.hget(redis_keys.job("job_taken_over"), "lease_until") or 0) == first_lease
    client.close()
