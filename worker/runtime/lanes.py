"""Slots of their own for each kind of task a worker runs: proxy calls, and webhook deliveries.

Celery gives a worker one concurrency and one prefetch count for all its queues, and it
reads the webhooks queue first. Slow receivers would then fill every slot, and a proxy call
would wait for deliveries that have nothing to do with it. So each kind of task has a lane:
the queues it comes from and a number of slots. The pool (`llmq.worker.runtime.asyncio_pool`)
runs a task within its lane's slots, the worker's prefetch is the sum of the lanes, and the
Redis transport (`llmq.worker.runtime.redis_transport`) leaves the queues of a full lane out of
its next BRPOP: a backlog of one kind of task is never taken into slots the other needs.

`held` counts the tasks of a lane handed to the pool and not yet finished. It goes up on the
consumer's thread as the message is handed over, before the next BRPOP is sent, so a lane
never takes more messages from its queues than it has slots.

Two details of the libraries underneath, each pinned by a test (tests/worker/runtime/test_lanes.py):
Celery passes a pool the task's name as the tracer's first argument, and kombu's Redis channel
takes the queues of each BRPOP from its `_queue_cycle.consume`. A per-queue prefetch in Celery
would retire both.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from llmq.worker import redis_keys
from llmq.worker.settings import get_settings

WEBHOOK_TASK = "llmq.deliver_webhook"


@dataclass
class Lane:
    name: str
    queues: frozenset[str]
    limit: int
    held: int = 0

    @property
    def full(self) -> bool:
        return self.held >= self.limit


@dataclass
class Lanes:
    """Proxy calls, and the tasks named in `by_task` (webhook deliveries), each with slots of their own."""

    calls: Lane
    by_task: dict[str, Lane]
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def all(self) -> list[Lane]:
        return [self.calls, *self.by_task.values()]

    def for_task(self, task_name: str) -> Lane:
        return self.by_task.get(task_name, self.calls)

    def take(self, lane: Lane) -> None:
        with self._lock:
            lane.held += 1

    def release(self, lane: Lane) -> None:
        with self._lock:
            lane.held -= 1

    def room(self, queues: Iterable[str]) -> int | None:
        """Free slots of the fullest lane these queues belong to: the most messages one take may pop from them."""
        wanted = set(queues)
        rooms = [lane.limit - lane.held for lane in self.all if lane.queues & wanted]
        return min(rooms) if rooms else None

    def open_queues(self, queues: Iterable[str]) -> list[str]:
        """`queues` without those of a full lane (a queue of no lane is always open)."""
        closed = {queue for lane in self.all if lane.full for queue in lane.queues}
        return [queue for queue in queues if queue not in closed]


@functools.lru_cache(maxsize=1)
def worker_lanes() -> Lanes:
    settings = get_settings()
    calls = Lane("calls", frozenset(redis_keys.QUEUE_BY_PRIORITY.values()), settings.worker_concurrency)
    webhooks = Lane("webhooks", frozenset({redis_keys.WEBHOOK_QUEUE}), settings.webhook_concurrency)
    return Lanes(calls, {WEBHOOK_TASK: webhooks})
