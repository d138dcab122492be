"""Lanes: proxy calls and webhook deliveries each have slots, and a full lane's queues are not read."""

from __future__ import annotations

import inspect
import re
from types import SimpleNamespace

import pytest
from celery import Task
from celery.worker.request import Request, create_request_cls
from kombu.transport import redis as kombu_redis

from llmq.worker import redis_keys
from llmq.worker.runtime.lanes import WEBHOOK_TASK, Lane, Lanes
from llmq.worker.runtime.redis_transport import LaneCycle

ALL_QUEUES = list(redis_keys.QUEUES_IN_ORDER)
CALL_QUEUES = list(redis_keys.QUEUE_BY_PRIORITY.values())
# Queues of no lane (a batch's steps: short, and counted with the calls once they run) are always read.
LANELESS = [queue for queue in ALL_QUEUES if queue not in CALL_QUEUES and queue != redis_keys.WEBHOOK_QUEUE]


def without(*closed: list[str]) -> list[str]:
    return [queue for queue in ALL_QUEUES if not any(queue in lane for lane in closed)]


def lanes(calls_held: int, webhooks_held: int) -> Lanes:
    calls = Lane("calls", frozenset(CALL_QUEUES), limit=2, held=calls_held)
    webhooks = Lane("webhooks", frozenset({redis_keys.WEBHOOK_QUEUE}), limit=3, held=webhooks_held)
    return Lanes(calls, {WEBHOOK_TASK: webhooks})


@pytest.mark.parametrize(
    ("calls_held", "webhooks_held", "open_queues"),
    [
        (0, 0, ALL_QUEUES),
        (1, 2, ALL_QUEUES),
        (0, 3, without([redis_keys.WEBHOOK_QUEUE])),
        (2, 0, without(CALL_QUEUES)),
        (2, 3, LANELESS),
        (5, 9, LANELESS),  # a retry whose countdown passed comes from the timer, beyond the limit
    ],
)
def test_a_full_lane_closes_its_queues(calls_held: int, webhooks_held: int, open_queues: list[str]) -> None:
    assert lanes(calls_held, webhooks_held).open_queues(ALL_QUEUES) == open_queues
    assert lanes(calls_held, webhooks_held).open_queues(["some.other.queue"]) == ["some.other.queue"]


def test_tasks_find_their_lane_and_are_counted() -> None:
    table = lanes(0, 0)
    webhooks = table.for_task(WEBHOOK_TASK)
    assert webhooks.name == "webhooks"
    assert table.for_task("llmq.call_proxy") is table.calls is table.for_task("")
    for _ in range(3):
        table.take(webhooks)
    assert webhooks.full and table.open_queues(ALL_QUEUES) == without([redis_keys.WEBHOOK_QUEUE])
    table.release(webhooks)
    assert not webhooks.full and table.open_queues(ALL_QUEUES) == ALL_QUEUES


class Cycle:
    """Kombu's priority cycle: the queues in order."""

    def __init__(self) -> None:
        self.items = list(ALL_QUEUES)
        self.rotated: list[str] = []

    def consume(self, n: int) -> list[str]:
        return self.items[:n]

    def rotate(self, queue: str) -> None:
        self.rotated.append(queue)


def test_a_full_lane_is_waited_for_a_50th_of_its_typical_task_within_bounds() -> None:
    both = lanes(2, 0)
    assert both.refill_wait_s(0.01, 1.0) == 0.01  # no task finished yet: the shortest wait
    both.release(both.calls, took_s=2.0)
    assert both.calls.typical_s == 2.0 and both.calls.held == 1  # the first task's time as it is
    assert both.refill_wait_s(0.01, 1.0) == 0.01  # room again: nothing to wait for
    both.take(both.calls)
    assert both.refill_wait_s(0.01, 1.0) == 2.0 / 50
    for _ in range(200):  # then a moving average: long calls make it grow, up to the longest wait
        both.release(both.calls, took_s=60.0)
        both.take(both.calls)
    assert 59 < both.calls.typical_s < 60 and both.refill_wait_s(0.01, 1.0) == 1.0
    both.release(both.calls)  # a task whose time is not known leaves the average as it is
    assert 59 < both.calls.typical_s < 60


def test_the_transport_reads_only_open_queues() -> None:
    inner = Cycle()
    cycle = LaneCycle(inner, lanes(0, 3))
    assert cycle.consume(len(ALL_QUEUES)) == without([redis_keys.WEBHOOK_QUEUE])
    cycle.rotate("llmq.high")  # everything else goes to kombu's own cycle
    assert inner.rotated == ["llmq.high"]


def test_the_library_internals_lanes_rely_on_are_still_there() -> None:
    # Kombu's Redis channel picks the queues of each BRPOP from `_queue_cycle.consume`, which LaneCycle wraps.
    assert "self._queue_cycle.consume(" in inspect.getsource(kombu_redis.Channel._brpop_start)
    # Celery hands a pool the task's name as the tracer's first argument, which picks the lane.
    fast_path = create_request_cls(Request, Task(), SimpleNamespace(apply_async=None), "host", None)
    for request_class in (Request, fast_path):
        assert re.search(r"args=\(self\._?type,", inspect.getsource(request_class.execute_using_pool))
