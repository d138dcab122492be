"""Long-polls and event streams whose clients leave: Redis is released at once, and waiting costs one connection."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

import httpx2
import psutil
import redis

from llmq.devstack.redis_server import RedisServer
from tests.stack import CALLER_KEY, MockProxy, Stack, chat, eventually, submit

WAITERS = 200
LEAVE_AFTER_S = 1.0
# The API's ordinary command pool keeps the connections a burst of requests opened (its size follows how many
# commands ran at once, a few more or less from one burst to the next); waiting once held two per request.
POOL_SLACK = 5


def api_connections(client: redis.Redis) -> int:
    """Connections to Redis other than the test's own."""
    own = client.client_id()
    return sum(1 for entry in client.client_list() if int(entry["id"]) != own)


def blocked(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


def abandoned_requests(port: int, path: str, waiters: int = WAITERS) -> None:
    """`waiters` clients send `GET path`, then leave after LEAVE_AFTER_S without reading the answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {CALLER_KEY}\r\n\r\n".encode()
    sockets = []
    try:
        for _ in range(waiters):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(request)
            sockets.append(sock)
        time.sleep(LEAVE_AFTER_S)
    finally:
        for sock in sockets:
            sock.close()


def test_abandoned_long_polls_and_streams_release_redis_at_once(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], record_figures: Callable[..., None]
) -> None:
    with RedisServer(appendonly=False) as redis_server:
        # No worker: the job stays queued, so every wait lasts as long as its client stays.
        stack = make_stack(redis_server.url, mock_proxy.url, "long-polls", LLMQ_MAX_WAITERS=str(WAITERS + 50))
        stack.start_api()
        assert stack.api is not None
        api = psutil.Process(stack.api.process.pid)
        with stack.client() as client:
            job_id = submit(client, chat("long-poll-model"))["id"]
        paths = [f"/v1/jobs/{job_id}?wait=30", f"/v1/jobs/{job_id}/events"]

        # The first waves leave the API's pools and allocator as big as this load makes them.
        for path in paths:
            abandoned_requests(stack.port, path)
            eventually(lambda: blocked(stack.redis) == 0, 5, "no client blocked in Redis")
        connections_before = api_connections(stack.redis)
        rss_before = api.memory_info().rss
        redis_before = int(stack.redis.info("memory")["used_memory"])

        figures: dict[str, object] = {}
        for kind, path in zip(("wait", "events"), paths, strict=True):
            started = time.monotonic()
            abandoned_requests(stack.port, path)
            eventually(lambda: blocked(stack.redis) == 0
                       and api_connections(stack.redis) <= connections_before + POOL_SLACK,
                       5, "the API's Redis connections back to where they were")
            figures[kind] = round(time.monotonic() - started - LEAVE_AFTER_S, 2)

        rss_after = api.memory_info().rss
        redis_after = int(stack.redis.info("memory")["used_memory"])
        # Places were given back: a new long-poll is served, not refused.
        with stack.client() as client:
            assert client.get(f"/v1/jobs/{job_id}", params={"wait": 0.2}).status_code == 200
    record_figures("abandoned long-polls", waiters=WAITERS, released_after_leaving_s=figures,
                   api_connections=connections_before, api_rss_mb=(round(rss_before / 2**20, 1),
                                                                   round(rss_after / 2**20, 1)),
                   redis_used_memory_mb=(round(redis_before / 2**20, 2), round(redis_after / 2**20, 2)))
    assert rss_after <= rss_before * 1.1
    assert redis_after <= redis_before * 1.1


def test_many_waiters_share_one_connection_and_all_get_their_results(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str
) -> None:
    jobs, per_job = 10, 10
    with RedisServer(appendonly=False) as redis_server:
        stack = make_stack(redis_server.url, mock_proxy.url, "many-waiters")
        stack.start_api()
        mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 1500}] * jobs)
        with stack.client() as client:
            ids = [submit(client, chat(model, f"job {i}"))["id"] for i in range(jobs)]

        async def wait_all() -> list[str]:
            async with httpx2.AsyncClient(base_url=stack.base_url, timeout=60,
                                          headers={"Authorization": f"Bearer {CALLER_KEY}"},
                                          limits=httpx2.Limits(max_connections=jobs * per_job)) as client:
                polls = [client.get(f"/v1/jobs/{job_id}", params={"wait": 30}) for job_id in ids * per_job]
                return [response.json()["status"] for response in await asyncio.gather(*polls)]

        async def while_waiting() -> tuple[list[str], int]:
            waiting = asyncio.ensure_future(wait_all())
            # Every waiter is in place before the worker starts; meanwhile one connection blocks for all of them.
            await asyncio.sleep(2)
            most_blocked = blocked(stack.redis)
            await asyncio.to_thread(stack.start_worker)
            return await waiting, most_blocked

        statuses, most_blocked = asyncio.run(while_waiting())
    assert statuses == ["succeeded"] * (jobs * per_job)
    assert most_blocked == 1


def test_a_caller_with_no_place_gets_a_503_with_retry_after(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack]
) -> None:
    with RedisServer(appendonly=False) as redis_server:
        stack = make_stack(redis_server.url, mock_proxy.url, "no-place", LLMQ_MAX_WAITERS="2",
                           LLMQ_WAITER_QUEUE_S="0.2")
        stack.start_api()
        with stack.client() as client:
            job_id = submit(client, chat("no-place-model"))["id"]

        async def crowd() -> list[httpx2.Response]:
            async with httpx2.AsyncClient(base_url=stack.base_url, timeout=30,
                                          headers={"Authorization": f"Bearer {CALLER_KEY}"}) as client:
                holders = [asyncio.ensure_future(client.get(f"/v1/jobs/{job_id}", params={"wait": 3}))
                           for _ in range(2)]
                await asyncio.sleep(0.5)
                refused = [await client.get(f"/v1/jobs/{job_id}", params={"wait": 3}),
                           await client.get(f"/v1/jobs/{job_id}/events")]
                return [*refused, *await asyncio.gather(*holders)]

        poll_refused, stream_refused, *held = asyncio.run(crowd())
        with stack.client() as client:
            after = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.2})
    for refused in (poll_refused, stream_refused):
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["type"] == "unavailable"
        assert "waiting" in refused.json()["error"]["message"]
    assert [response.status_code for response in held] == [200, 200]
    assert after.status_code == 200
