"""One blocking read per API process for every job event stream a request is waiting on.

A long-poll (`GET /v1/jobs/{id}?wait=N`) and an event stream (`/v1/jobs/{id}/events`) wait for
new entries of a job's stream. A blocking XREAD per request held a Redis connection each
(and Redis kept it blocked after the client had left) until it timed out: a thousand waiting
requests were a thousand connections, and at Redis's `maxclients` everything failed.

Here one task per process reads every stream somebody follows with one `XREAD BLOCK` on one
connection of its own, and hands each request the entries after its own position. A request
takes a place (`follow`): at most `max_waiters` at once, and one that gets none within
`place_timeout_s` is refused (`NoPlace`, a 503). When the set of streams grows (or empties),
the read in progress is ended with `CLIENT UNBLOCK` from the ordinary pool, and the next one
covers the new set: a request that leaves stops costing anything at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import redis.asyncio as aioredis
import redis.exceptions

from llmq.worker import redis_keys

log = logging.getLogger("llmq.api")

Entries = list[tuple[str, dict[str, Any]]]
# What redis-py's XREAD answers, with decode_responses on: per stream, its entries (a dict under RESP3).
StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]] | dict[str, list[tuple[str, dict[str, str]]]] | None
# Longest one read blocks; a change of the set of streams ends it sooner.
BLOCK_MS = 10_000
# Entries taken per stream per read; the rest come with the next read, at once.
READ_COUNT = 500
# After Redis failed a read: the requests waiting are told, and the reader tries again after this.
RETRY_S = 0.5
# Between attempts to end a read that has not yet reached Redis, and how many.
UNBLOCK_RETRY_S = 0.005
UNBLOCK_TRIES = 100


class NoPlace(Exception):
    """Every place for a waiting request is taken; the caller should come back shortly."""


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Place:
    """A request's place among the waiting ones; released once, however often asked."""

    def __init__(self, places: asyncio.Semaphore) -> None:
        self._places: asyncio.Semaphore | None = places

    def release(self) -> None:
        if self._places is not None:
            self._places.release()
            self._places = None


class Subscription:
    """One request's view of one job's stream: the entries after `after_id`, as they come."""

    def __init__(self, key: str, after_id: str) -> None:
        self.key = key
        self.after_id = after_id
        self._inbox: asyncio.Queue[Entries | Exception] = asyncio.Queue()

    def deliver(self, entries: Entries) -> None:
        fresh = [(event_id, event) for event_id, event in entries if _order(event_id) > _order(self.after_id)]
        if fresh:
            self.after_id = fresh[-1][0]
            self._inbox.put_nowait(fresh)

    def fail(self, err: Exception) -> None:
        self._inbox.put_nowait(err)

    async def next(self, timeout_s: float) -> Entries:
        """The entries that came since the last call, waiting up to `timeout_s` for some; [] when none came."""
        try:
            async with asyncio.timeout(max(timeout_s, 0)):
                item = await self._inbox.get()
        except TimeoutError:
            return []
        if isinstance(item, Exception):
            raise item
        return item


class StreamReader:
    def __init__(self, reader: aioredis.Redis, control: aioredis.Redis, max_waiters: int,
                 place_timeout_s: float) -> None:
        # `reader` must hold one connection of its own: `CLIENT UNBLOCK` names it by its id.
        self._reader = reader
        self._control = control
        self._places = asyncio.Semaphore(max_waiters)
        self._place_timeout_s = place_timeout_s
        self._subscriptions: dict[str, set[Subscription]] = {}
        self._wanted = asyncio.Event()  # set while anybody follows a stream
        self._reading: dict[str, str] | None = None  # the streams of the read in progress, and from where
        self._stale = False  # the read in progress does not cover what is followed now
        self._client_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._waker: asyncio.Task[None] | None = None
        self.max_waiters = max_waiters

    @property
    def waiting(self) -> int:
        return sum(len(subs) for subs in self._subscriptions.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="llmq-stream-reader")

    async def aclose(self) -> None:
        for task in (self._task, self._waker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._reader.aclose()

    async def reserve(self) -> Place:
        """A place among the waiting requests, waiting up to `place_timeout_s` for one; NoPlace if none."""
        try:
            await asyncio.wait_for(self._places.acquire(), self._place_timeout_s)
        except TimeoutError:
            raise NoPlace(f"all {self.max_waiters} places for waiting requests of this API process are "
                          "taken") from None
        return Place(self._places)

    @contextlib.asynccontextmanager
    async def follow(self, job_id: str, after_id: str, place: Place | None = None) -> AsyncIterator[Subscription]:
        """The job's stream after `after_id`, in `place` (reserved here when not given; released on exit)."""
        place = place or await self.reserve()
        subscription = Subscription(redis_keys.job_events(job_id), after_id)
        try:
            self._add(subscription)
            yield subscription
        finally:
            self._remove(subscription)
            place.release()

    def _add(self, subscription: Subscription) -> None:
        self._subscriptions.setdefault(subscription.key, set()).add(subscription)
        self._wanted.set()
        reading = self._reading
        if reading is not None:
            covered = reading.get(subscription.key)
            if covered is None or _order(subscription.after_id) < _order(covered):
                self._restart_read()

    def _remove(self, subscription: Subscription) -> None:
        followers = self._subscriptions.get(subscription.key)
        if followers is not None:
            followers.discard(subscription)
            if not followers:
                del self._subscriptions[subscription.key]
        if not self._subscriptions:
            # Nobody waits: no read should stay blocked in Redis. A stream left behind in a read costs
            # nothing until it ends; the next read leaves it out.
            self._wanted.clear()
            if self._reading is not None:
                self._restart_read()

    def _restart_read(self) -> None:
        self._stale = True
        if self._waker is None or self._waker.done():
            self._waker = asyncio.get_running_loop().create_task(self._end_stale_read())

    async def _end_stale_read(self) -> None:
        """Ends the read in progress once it no longer covers what is followed; the loop then starts another."""
        for _ in range(UNBLOCK_TRIES):
            if not self._stale or self._reading is None:
                return
            client_id = self._client_id
            try:
                if client_id is not None and await self._control.client_unblock(client_id):
                    return
            except redis.exceptions.RedisError as err:
                log.warning("could not end a blocking read early (%s); it ends within %d ms",
                            type(err).__name__, BLOCK_MS)
                return
            await asyncio.sleep(UNBLOCK_RETRY_S)  # the read was sent but has not reached Redis yet
        # No blocked client of that id: the connection was replaced under the read. Its id is asked again
        # before the next read; this one ends within BLOCK_MS.
        self._client_id = None

    async def _run(self) -> None:
        while True:
            await self._wanted.wait()
            streams = {key: min((sub.after_id for sub in subs), key=_order)
                       for key, subs in self._subscriptions.items()}
            self._stale = False
            # From here on a new follower is either in `streams` or ends the read (see `_add`).
            self._reading = streams
            try:
                if self._client_id is None:
                    self._client_id = cast(int, await self._reader.client_id())
                reply = cast(StreamReply, await self._reader.xread(
                    streams, block=BLOCK_MS, count=READ_COUNT))  # type: ignore[arg-type]
            except Exception as err:  # the waiting requests are told (a Redis outage is their 503); the reader goes on
                self._reading = None
                if not isinstance(err, redis.exceptions.RedisError):
                    log.exception("the stream reader failed")
                self._client_id = None  # a new connection has a new id
                for followers in self._subscriptions.values():
                    for subscription in followers:
                        subscription.fail(err)
                await asyncio.sleep(RETRY_S)
                continue
            self._reading = None
            for key, entries in (reply.items() if isinstance(reply, dict) else reply or []):
                events = [(event_id, json.loads(fields["e"])) for event_id, fields in entries]
                for subscription in list(self._subscriptions.get(key, ())):
                    subscription.deliver(events)

