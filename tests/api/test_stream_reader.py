"""The API's one reader for every waiting request, against a real Redis of its own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from llmq.api.stream_reader import BLOCK_MS, NoPlace, StreamReader
from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys

# Well inside one blocking read: an entry that arrives by then was not left waiting for the read to time out.
SOON_S = BLOCK_MS / 1000 / 3


def run(test: Callable[[StreamReader, aioredis.Redis], Awaitable[None]], max_waiters: int = 10) -> None:
    async def main() -> None:
        with RedisServer(appendonly=False) as server:
            control = aioredis.Redis.from_url(server.url, decode_responses=True)
            reader = StreamReader(aioredis.Redis.from_url(server.url, decode_responses=True,
                                                          single_connection_client=True),
                                  control, max_waiters, place_timeout_s=0.1)
            reader.start()
            try:
                await test(reader, control)
            finally:
                await reader.aclose()
                await control.aclose()

    asyncio.run(main())


async def add(control: aioredis.Redis, job_id: str, **event: Any) -> str:
    return str(await control.xadd(redis_keys.job_events(job_id), {"e": json.dumps(event)}))


async def blocked(control: aioredis.Redis) -> int:
    return int((await control.info("clients"))["blocked_clients"])


def test_each_follower_gets_the_entries_after_its_own_position_in_order() -> None:
    async def test(reader: StreamReader, control: aioredis.Redis) -> None:
        first = await add(control, "a", type="state", status="queued")
        async with reader.follow("a", "0-0") as from_start, reader.follow("a", first) as from_first:
            second = await add(control, "a", type="state", status="running")
            assert [e for e, _ in await from_start.next(SOON_S)] == [first, second]
            assert await from_first.next(SOON_S) == [(second, {"type": "state", "status": "running"})]
            assert await from_first.next(0.05) == []  # nothing new: the wait just ends

    run(test)


def test_a_new_stream_joins_the_read_in_progress() -> None:
    async def test(reader: StreamReader, control: aioredis.Redis) -> None:
        async with reader.follow("a", "0-0"):
            await asyncio.sleep(0.2)  # the reader is blocked on stream a alone
            async with reader.follow("b", "0-0") as b:
                entry = await add(control, "b", type="delta")
                assert [e for e, _ in await b.next(SOON_S)] == [entry]
            assert await blocked(control) == 1  # one connection waits for every follower

    run(test)


def test_nobody_waiting_leaves_no_client_blocked() -> None:
    async def test(reader: StreamReader, control: aioredis.Redis) -> None:
        async with reader.follow("a", "0-0"):
            await asyncio.sleep(0.2)
            assert await blocked(control) == 1
        for _ in range(100):
            if await blocked(control) == 0:
                break
            await asyncio.sleep(0.01)
        assert await blocked(control) == 0

    run(test)


def test_places_are_bounded_and_given_back() -> None:
    async def test(reader: StreamReader, control: aioredis.Redis) -> None:
        async with reader.follow("a", "0-0"), reader.follow("b", "0-0"):
            with pytest.raises(NoPlace, match="all 2 places"):
                async with reader.follow("c", "0-0"):
                    pass
        async with reader.follow("c", "0-0"):
            assert reader.waiting == 1

    run(test, max_waiters=2)
