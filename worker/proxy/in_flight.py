"""The proxy calls a worker process has in flight: aborted when their job is cancelled, their leases kept.

Every call runs as its own asyncio task on the process's event loop (`llmq.worker.runtime.event_loop`),
registered here by job id. Two background tasks on the same loop serve all of them, so the cost is bounded
per process, not per job:

- one pub/sub subscription to `redis_keys.CANCELS_CHANNEL`, on which cancelling a running job names it
  (the cancel script publishes, atomically with the cancel). The call's task is cancelled: the connection to
  the proxy is closed and the proxy stops spending tokens on an answer nobody reads. A cancel that arrives
  between the claim and the call's start is remembered for a while, so the call does not start at all. While
  the subscription is down (Redis restarting) a cancel goes unheard: the call runs on and its answer is
  dropped, as the job is already `cancelled`.
- one lease renewal: a call running longer than a third of its lease has its job's lease extended, so that
  the lease check (`llmq.worker.sweeper`) takes back only the jobs of a worker that is gone (or whose
  loop is stuck), never those of one that is merely slow. One script call renews every due lease.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from llmq.worker import redis_keys
from llmq.worker.jobs import scripts as job_scripts

log = logging.getLogger("llmq.worker")
T = TypeVar("T")
# Cancels heard for calls not (yet) registered here: most are other workers' calls. Enough to cover the moment
# between a claim and its call, in a cluster cancelling many jobs at once.
REMEMBERED_CANCELS = 10_000
RESUBSCRIBE_DELAY_S = 1.0
RENEW_CHUNK = 100


class CallCancelled(Exception):
    """The job was cancelled while its call was in flight (or about to start); the call was aborted."""


@dataclass
class _Call:
    task: asyncio.Future[Any]
    attempt: int
    lease_until: float


class InFlightCalls:
    def __init__(self, redis_url: str, lease_s: float) -> None:
        self.lease_s = lease_s
        # A lease is renewed once a third of it has gone: two more chances before it lapses.
        self.renew_after_s = lease_s / 3
        # No socket timeout: the subscription waits for messages as long as none come.
        self._redis = aioredis.Redis.from_url(redis_url, decode_responses=True, socket_keepalive=True)
        self._renew_script = self._redis.register_script(job_scripts.RENEW_LEASES)
        self._calls: dict[str, _Call] = {}
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self._background: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()

    def _start(self) -> None:
        if not self._background:
            self._background = [asyncio.ensure_future(self._listen()), asyncio.ensure_future(self._renew_leases())]

    async def run(self, job_id: str, attempt: int, call: Coroutine[Any, Any, T]) -> T:
        """`await call`, as a task a cancel of the job aborts (then `CallCancelled` is raised)."""
        self._start()
        if job_id in self._cancelled:
            call.close()
            raise CallCancelled(job_id)
        task = asyncio.ensure_future(call)
        self._calls[job_id] = _Call(task, attempt, time.time() + self.lease_s)
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the worker is stopping: the call went with it
            raise CallCancelled(job_id) from None
        finally:
            self._calls.pop(job_id, None)

    def cancel(self, job_id: str) -> bool:
        """Abort the job's call if this process holds it; otherwise remember, in case it is about to start."""
        call = self._calls.get(job_id)
        if call is None:
            self._cancelled[job_id] = None
            while len(self._cancelled) > REMEMBERED_CANCELS:
                self._cancelled.popitem(last=False)
            return False
        call.task.cancel()
        return True

    async def aclose(self) -> None:
        """Stop listening and renewing (a worker process keeps both until it exits)."""
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        await self._redis.aclose()

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(redis_keys.CANCELS_CHANNEL)
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message" and self.cancel(message["data"]):
                            log.info("call aborted: its job was cancelled", extra={"job_id": message["data"]})
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis went away: listen again once it is back
                self.subscribed.clear()
                log.warning("cancel subscription lost (%s); resubscribing", type(err).__name__)
                await asyncio.sleep(RESUBSCRIBE_DELAY_S)

    async def _renew_leases(self) -> None:
        while True:
            await asyncio.sleep(self.renew_after_s / 2)
            now = time.time()
            due = [(job_id, call) for job_id, call in self._calls.items()
                   if call.lease_until - now <= self.lease_s - self.renew_after_s]
            for start in range(0, len(due), RENEW_CHUNK):
                chunk = due[start:start + RENEW_CHUNK]
                lease_until = now + self.lease_s
                try:
                    await self._renew_script(keys=[redis_keys.job(job_id) for job_id, _ in chunk],
                                             args=[repr(lease_until), *(call.attempt for _, call in chunk)])
                except Exception as err:  # the next round tries again, while the leases still hold
                    log.warning("leases not renewed (%s)", type(err).__name__)
                    break
                for _, call in chunk:
                    call.lease_until = lease_until
