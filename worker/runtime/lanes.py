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

A slot frees on the event loop's thread, which cannot cut short the consumer's BRPOP on the
other queues; while a lane is full, the transport comes back for its queues after
`refill_wait_s`: a 50th of the lane's typical task, so a slot stays empty about 2 % of a task's
time at most, for as many BRPOPs per task as 50 over the slots (0.25 at 200 slots). Coming back
after a 25th and waiting until as many slots were free, for one take of several, kept 8 of 200
slots empty on average during a batch (0.887 of its ceiling against 0.912) to save half a Redis
command per line.

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

# What share of a lane's typical task a freed slot may stay empty, and the weight of each task's time in it.
REFILL_SHARE = 1 / 50
TYPICAL_WEIGHT = 0.05

WEBHOOK_TASK = "llmq.deliver_webhook"


@dataclass
class Lane:
    name: str
    queues: frozenset[str]
    limit: int
    held: int = 0
    typical_s: float = 0.0  # a moving average of its tasks' time in the pool (0 until one has finished)

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

    def release(self, lane: Lane, took_s: float | None = None) -> None:
        with self._lock:
            lane.held -= 1
            if took_s is not None:
                lane.typical_s += (took_s - lane.typical_s) * (TYPICAL_WEIGHT if lane.typical_s else 1.0)

    def refill_wait_s(self, shortest: float, longest: float) -> float:
        """How long a BRPOP that leaves out the queues of the full lanes may wait, within [shortest, longest]."""
        typical = [lane.typical_s for lane in self.all if lane.full]
        return min(max(shortest, min(typical, default=0.0) * REFILL_SHARE), longest)

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
