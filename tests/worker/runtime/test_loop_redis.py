"""A job's scripts, run by a task on the event loop, are awaited there: the loop goes on while Redis answers. The
worker's loop client and the API's pack with hiredis where the URL's scheme allows it."""

from __future__ import annotations

import asyncio
import time

import greenback
import pytest
import redis
import redis.asyncio

from llmq.api.redis_client import connect
from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.jobs.record import NewJob, new_job_id
from llmq.worker.jobs.store import JobStore
from llmq.worker.runtime.event_loop import get_loop
from llmq.worker.runtime.loop_redis import HiredisPackingConnection, loop_client
from llmq.worker.settings import load_settings


def queued_job(client: redis.Redis) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}", environment="test",
                 priority="high", max_attempts=3, created_at=time.time(), app_id="a")
    client.hset(redis_keys.job(job.id), mapping={**job.fields, "status": "queued"})
    return job.id


def test_a_claim_on_the_loop_lets_other_tasks_run_while_it_waits_for_redis() -> None:
    with RedisServer(appendonly=False) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        on_the_loop = loop_client(load_settings(redis_url=server.url))
        store = JobStore(client, 3600, on_the_loop)
        order: list[str] = []

        async def another_task() -> None:
            order.append("another task ran")

        def claim(job_id: str) -> None:
            # Scheduled before the claim: on a blocking round trip it could only run once the claim has its answer.
            get_loop().create_task(another_task())
            assert store.claim(job_id, 30.0).state == "claimed"
            order.append("claimed")

        async def in_a_portal(job_id: str) -> None:
            await greenback.with_portal_run_sync(claim, job_id)  # as the worker's pool runs a task

        asyncio.run_coroutine_threadsafe(in_a_portal(queued_job(client)), get_loop()).result(timeout=10)
        assert order == ["another task ran", "claimed"]

        client.script_flush()  # Redis restarted without its scripts: the claim loads its own again
        order.clear()
        asyncio.run_coroutine_threadsafe(in_a_portal(queued_job(client)), get_loop()).result(timeout=10)
        assert order[-1] == "claimed" and client.hget(redis_keys.job(queued_job(client)), "status") == "queued"
        asyncio.run_coroutine_threadsafe(on_the_loop.connection_pool.disconnect(), get_loop()).result(timeout=10)
        client.close()


@pytest.mark.parametrize(
    ("url", "connection_class"),
    [
        ("redis://127.0.0.1:6390/0", HiredisPackingConnection),
        ("rediss://127.0.0.1:6390/0", redis.asyncio.SSLConnection),  # was the packing class: TLS never started
        ("unix:///tmp/llmq-test-redis.sock?db=0", redis.asyncio.UnixDomainSocketConnection),
    ],
)
def test_the_packing_connection_is_used_only_where_the_scheme_allows(url: str, connection_class: type) -> None:
    settings = load_settings(redis_url=url)
    api_client = connect(settings, 1.0)
    for client in (loop_client(settings), api_client):
        assert client.connection_pool.connection_class is connection_class
