"""The submit script marks an app's partition of the index of unfinished jobs in use (the sweeper walks those), and
an API process skips that mark while its own is recent: a command a minute per app id, not one per job
(worker/jobs/unfinished.py)."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from llmq.api.job_store import AsyncJobStore, Quotas, Refusal, Submission
from llmq.api.memory_guard import MemoryGuard
from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.jobs.record import NewJob, new_job_id

APP = "7001"
PARTITION = redis_keys.app_unfinished(APP)
LISTED = redis_keys.UNFINISHED_PARTITIONS


def a_store(client: aioredis.Redis, app_max: int = 100) -> AsyncJobStore:
    """One API process's store; the app id is the service's own, so known from the start."""
    return AsyncJobStore(client, 3600, Quotas(app_max, 10, frozenset({APP})), MemoryGuard(client, 0.9))


def submission(created_at: float) -> Submission:
    return Submission(NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}",
                             environment="test", priority="normal", max_attempts=3, created_at=created_at,
                             app_id=APP))


def test_a_partition_is_marked_unless_this_process_marked_it_lately(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7", decode_responses=True)
        await client.flushdb()  # db 7 belongs to one test module at a time
        try:
            one, two = a_store(client), a_store(client)  # two API processes
            base = time.time()
            first = submission(base)
            assert await one.submit_many([first]) == [first.job.id]
            assert await client.zscore(LISTED, PARTITION) == base
            await client.zrem(PARTITION, first.job.id)  # as its last transition does
            # Empty again, but this process marked it a moment ago: the sweeper keeps it listed that long.
            second = submission(base + 1)
            assert await one.submit_many([second]) == [second.job.id]
            assert await client.zscore(LISTED, PARTITION) == base
            # Another process has no mark of its own to rely on, whether the partition holds jobs or not (it may
            # hold only entries a previous version left, with the partition unlisted).
            assert await two.submit_many([submission(base + 2)])
            assert await client.zscore(LISTED, PARTITION) == base + 2
            assert await two.submit_many([submission(base + 3)])
            assert await client.zscore(LISTED, PARTITION) == base + 2
            # A mark never moves back (clocks apart).
            assert await a_store(client).submit_many([submission(base - 100)])
            assert await client.zscore(LISTED, PARTITION) == base + 2
            assert await client.zcard(PARTITION) == 4
        finally:
            await client.aclose()

    asyncio.run(run())


def test_quota_full_tells_the_refusal_a_submission_would_get(redis_server: RedisServer) -> None:
    async def run() -> None:
        client = aioredis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7", decode_responses=True)
        await client.flushdb()
        try:
            store = a_store(client, app_max=2)
            assert await store.quota_full(APP) is None
            assert await store.submit_many([submission(time.time()), submission(time.time())])
            assert await store.quota_full(APP) == Refusal("app_quota")
            assert await store.submit_many([submission(time.time())]) == [Refusal("app_quota")]
            # An app id not known yet shares the unknown apps' partition (10 here).
            assert await store.quota_full("7002") is None
            await client.zadd(redis_keys.UNKNOWN_APPS_UNFINISHED, {f"job_x{n}": time.time() for n in range(10)})
            assert await store.quota_full("7002") == Refusal("unknown_app_quota")
        finally:
            await client.aclose()

    asyncio.run(run())
