"""A Celery pool that runs every task on the process's event loop (`LLMQ_WORKER_POOL=asyncio`, the default).

Celery's thread pool holds one thread per waiting proxy call: about 150 KB of memory
each, and 200 threads fighting the consumer for the GIL cap a process near 330 jobs/s.
Here each task is an asyncio task on one loop thread, running Celery's own synchronous
tracer (events, retries, acknowledgements, all unchanged) inside a greenback portal, so
that where the task waits on the network (`llmq.worker.runtime.event_loop.wait`) only that task is
suspended. Synchronous work between waits (a few Redis round trips) runs on the loop
thread itself.

Proxy calls and webhook deliveries run in slots of their own (`llmq.worker.runtime.lanes`):
Celery hands the pool the task's name as the first argument of its tracer, which picks the lane.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import greenback
from celery.concurrency.base import BasePool, apply_target

from llmq.worker.runtime.event_loop import get_loop
from llmq.worker.runtime.lanes import Lane, worker_lanes

log = logging.getLogger("llmq.worker")


class AsyncioPool(BasePool):
    body_can_be_buffer = True
    signal_safe = False

    def on_start(self) -> None:
        self.loop = get_loop()
        self.running: set[asyncio.Task[None]] = set()
        self.lanes = worker_lanes()
        self.slots = {lane.name: asyncio.Semaphore(lane.limit) for lane in self.lanes.all}

    def on_apply(
        self,
        target: Callable[..., Any],
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        accept_callback: Callable[..., Any] | None = None,
        **_: Any,
    ) -> None:
        # Called on the consumer's thread: count the task in its lane before the next message is read,
        # then hand over and return at once.
        args = args or ()
        lane = self.lanes.for_task(args[0] if args and isinstance(args[0], str) else "")
        self.lanes.take(lane)
        try:
            self.loop.call_soon_threadsafe(self._spawn, lane, target, args, kwargs or {}, callback, accept_callback)
        except BaseException:
            self.lanes.release(lane)
            raise

    def _spawn(self, lane: Lane, *job: Any) -> None:
        task = self.loop.create_task(self._run(lane, *job))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def _run(self, lane: Lane, target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                   callback: Callable[..., Any] | None, accept_callback: Callable[..., Any] | None) -> None:
        # The broker's prefetch and the transport's lanes already bound the tasks handed over (a retry whose
        # countdown has passed comes from the worker's timer instead); this holds each lane's limit regardless.
        started = time.monotonic()
        try:
            async with self.slots[lane.name]:
                await greenback.with_portal_run_sync(apply_target, target, args, kwargs, callback, accept_callback)
        except Exception:
            log.exception("task crashed outside Celery's tracer")
        finally:
            self.lanes.release(lane, time.monotonic() - started)

    async def _drain(self) -> None:
        while self.running:
            await asyncio.gather(*list(self.running), return_exceptions=True)

    def on_stop(self) -> None:
        """Warm shutdown: the tasks in hand finish (and are acknowledged) before the process exits."""
        asyncio.run_coroutine_threadsafe(self._drain(), self.loop).result()

    def on_terminate(self) -> None:
        """Cold shutdown: leave at once; unacknowledged messages come back after the visibility timeout."""

    def _get_info(self) -> dict[str, Any]:
        info = super()._get_info()
        info.update({"max-concurrency": self.limit, "in-flight": len(self.running),
                     "lanes": {lane.name: {"slots": lane.limit, "held": lane.held} for lane in self.lanes.all}})
        return info
