"""Receivers that answer one header line at a time: a delivery has one deadline, and jobs never wait for one."""

from __future__ import annotations

from collections.abc import Callable

import psutil

from llmq.devstack.redis_server import RedisServer
from tests.receiver import Receiver
from tests.stack import OTHER_KEY, MockProxy, Stack, chat, eventually, submit, wait_finished, wait_until

DEADLINE_S = 2
SLOW_CALLBACKS = 20
SLOTS = 6  # worker slots for proxy calls, and (separately) for deliveries


def test_a_dripping_receiver_fails_at_the_deadline(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str
) -> None:
    # Each header line comes well within any read timeout; the whole answer takes 12 s.
    with RedisServer(appendonly=False) as redis_server, Receiver(drip_s=12, drip_every_s=0.3) as receiver:
        stack = make_stack(redis_server.url, mock_proxy.url, "webhook-deadline",
                           LLMQ_WEBHOOK_TIMEOUT_S=str(DEADLINE_S), LLMQ_WEBHOOK_SCHEDULE_S="0,0.2")
        stack.start_api()
        stack.start_worker()
        with stack.client() as client:
            job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
            job = wait_until(client, job_id, lambda j: j.get("callback_status") in ("delivered", "failed"), 40)
            answered = receiver.answered  # both attempts ended before the receiver finished either answer
    assert answered == 0
    assert job["status"] == "succeeded"
    assert job["callback_status"] == "failed"
    assert len(job["deliveries"]) == 2 == len(receiver.received)
    for delivery in job["deliveries"]:
        assert delivery.get("status_code") is None
        assert "deadline" in delivery["error"]


def test_slow_deliveries_leave_the_proxy_slots_free(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str
) -> None:
    with RedisServer(appendonly=False) as redis_server, Receiver(drip_s=60, drip_every_s=0.5) as receiver:
        stack = make_stack(redis_server.url, mock_proxy.url, "webhook-lanes", LLMQ_WORKER_CONCURRENCY=str(SLOTS),
                           LLMQ_WEBHOOK_CONCURRENCY=str(SLOTS), LLMQ_WEBHOOK_TIMEOUT_S="90",
                           LLMQ_VISIBILITY_TIMEOUT_S="200")
        stack.start_api()
        stack.start_worker()
        with stack.client() as client, stack.client(OTHER_KEY) as other:
            slow = [submit(client, chat(model), callback_url=receiver.url)["id"] for _ in range(SLOW_CALLBACKS)]
            eventually(lambda: receiver.in_flight == SLOTS, 30, "the deliveries to fill their slots")
            plain = wait_finished(other, submit(other, chat(model))["id"], timeout_s=80)
            # The plain job went through while every slot of deliveries was still held by a slow receiver.
            in_flight = receiver.in_flight
            statuses = [client.get(f"/v1/jobs/{job_id}").json().get("callback_status") for job_id in slow]
    assert plain["status"] == "succeeded"
    assert in_flight == SLOTS
    assert statuses.count("delivering") == SLOTS
    assert "delivered" not in statuses and "failed" not in statuses


def test_memory_comes_back_after_slow_receivers(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str, record_figures: Callable[..., None]
) -> None:
    jobs, attempts = 20, 5
    with RedisServer(appendonly=False) as redis_server, Receiver(drip_s=60, drip_every_s=0.2) as receiver:
        schedule = ",".join(["0"] + ["0.1"] * (attempts - 1))
        stack = make_stack(redis_server.url, mock_proxy.url, "webhook-memory", LLMQ_WEBHOOK_CONCURRENCY="20",
                           LLMQ_WEBHOOK_TIMEOUT_S="1", LLMQ_WEBHOOK_SCHEDULE_S=schedule)
        stack.start_api()
        worker = psutil.Process(stack.start_worker().process.pid)

        def wave() -> None:
            with stack.client() as client:
                ids = [submit(client, chat(model, f"job {i}"), callback_url=receiver.url)["id"] for i in range(jobs)]
                for job_id in ids:
                    job = wait_until(client, job_id, lambda j: j.get("callback_status") in ("delivered", "failed"), 60)
                    assert job["callback_status"] == "failed" and len(job["deliveries"]) == attempts

        wave()  # the first wave grows the worker's pools and allocator as far as this load takes them
        rss_before, redis_before = worker.memory_info().rss, int(stack.redis.info("memory")["used_memory"])
        wave()
        eventually(lambda: receiver.in_flight == 0, 10, "the receiver to notice every attempt was given up")
        rss_after, redis_after = worker.memory_info().rss, int(stack.redis.info("memory")["used_memory"])
    record_figures("slow webhook receivers", slow_attempts=jobs * attempts * 2, receiver_answered=receiver.answered,
                   worker_rss_mb=(round(rss_before / 2**20, 1), round(rss_after / 2**20, 1)),
                   redis_used_memory_mb=(round(redis_before / 2**20, 2), round(redis_after / 2**20, 2)))
    assert receiver.answered == 0
    assert rss_after <= rss_before * 1.1
    assert redis_after <= redis_before * 1.1  # the second wave's 20 job records included
