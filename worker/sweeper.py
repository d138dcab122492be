"""The last line of defence: find jobs that nothing will move on, and move them on.

The broker redelivers a lost worker's messages by itself. The sweeper is for what slips
past that: a message lost with its broker, an API that died between recording a job
and publishing it, a retry whose message vanished. One worker at a time sweeps (a Redis
lock), every `sweep_interval_s`, on a thread of its own.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from llmq.worker import redis_keys
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs.record import job_error

log = logging.getLogger("llmq.sweeper")
MAX_REQUEUES = 3
BATCH = 500
Publish = Callable[[str, str, str], None]


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    forgotten: int = 0


def overdue_at(fields: dict[str, str], visibility_s: float, stuck_after_s: float) -> float | None:
    """When the broker should long have brought this job back if it has not; None for a finished job."""
    status = fields.get("status")
    if status == "running":
        return float(fields.get("lease_until") or 0) + visibility_s
    if status == "retrying":
        return float(fields.get("next_attempt_at") or 0) + visibility_s
    if status == "queued":
        return float(fields.get("updated_at") or 0) + stuck_after_s
    return None


def sweep(
    rt: Runtime, publish: Publish, now: float | None = None, notify: Callable[[str], None] = lambda _: None
) -> SweepReport:
    """Publish overdue jobs again; fail (and `notify` the callbacks of) those that never move."""
    now = time.time() if now is None else now
    settings = rt.settings
    horizon = now - min(settings.visibility_timeout_s, settings.stuck_after_s)
    report = SweepReport()
    names = ("status", "lease_until", "next_attempt_at", "updated_at", "model", "priority", "requeues",
             "attempt_count", "requeued_at_attempt")
    due = cast(list[str], rt.redis.zrangebyscore(redis_keys.ACTIVE_JOBS, 0, horizon, start=0, num=BATCH))
    for job_id in due:
        values = cast(list[str | None], rt.redis.hmget(redis_keys.job(job_id), names))
        fields = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        if "status" not in fields:  # expired with its TTL, unfinished: its event stream never got one
            rt.redis.delete(redis_keys.job_events(job_id))
            rt.redis.zrem(redis_keys.ACTIVE_JOBS, job_id)
            report.forgotten += 1
            continue
        due_at = overdue_at(fields, settings.visibility_timeout_s, settings.stuck_after_s)
        if due_at is None:  # finished: its own last change should have taken it out
            rt.redis.zrem(redis_keys.ACTIVE_JOBS, job_id)
            continue
        if due_at >= now:
            # Alive (a claim leaves the job's entry as it was, to save a command per job): come back to it
            # in the sweep after it could be overdue.
            rt.redis.zadd(redis_keys.ACTIVE_JOBS, {job_id: due_at - (now - horizon)}, xx=True)
            continue
        # Republishing counts against a job only while it makes no attempt in between: a long job
        # rescued now and then over its life is not stuck.
        attempts = fields.get("attempt_count", "0")
        stalled = fields.get("requeued_at_attempt", attempts) == attempts
        requeues = int(fields.get("requeues") or 0) if stalled else 0
        if fields["status"] != "queued" and requeues >= MAX_REQUEUES:
            error = job_error("stuck", f"the job stopped moving ({fields['status']}) and was published again "
                                       f"{requeues} times without progress")
            if rt.store.fail_unfinished(job_id, error):
                report.failed.append(job_id)
                notify(job_id)
            continue
        pipe = rt.redis.pipeline(transaction=False)
        pipe.hset(redis_keys.job(job_id), mapping={"requeues": requeues + 1, "requeued_at_attempt": attempts})
        pipe.zadd(redis_keys.ACTIVE_JOBS, {job_id: now})  # not again before another full period
        pipe.execute()
        queue = redis_keys.QUEUE_BY_PRIORITY.get(fields.get("priority", ""), "llmq.normal")
        publish(job_id, fields.get("model", ""), queue)
        report.requeued.append(job_id)
    if report.requeued or report.failed:
        log.warning("sweep: published again %d stuck job(s), failed %d", len(report.requeued), len(report.failed))
    return report


class Sweeper(threading.Thread):
    def __init__(
        self, rt: Runtime, publish: Publish, notify: Callable[[str], None],
        also: tuple[Callable[[], object], ...] = (),
    ) -> None:
        super().__init__(name="llmq-sweeper", daemon=True)
        self.rt = rt
        self.publish = publish
        self.notify = notify
        self.also = also  # further sweeps under the same lock (stalled batches)
        self.stopping = threading.Event()

    def run(self) -> None:
        interval = self.rt.settings.sweep_interval_s
        while not self.stopping.wait(interval * random.uniform(0.8, 1.2)):
            try:
                if self.rt.redis.set(redis_keys.SWEEPER_LOCK, "1", nx=True, ex=max(int(interval), 1)):
                    sweep(self.rt, self.publish, notify=self.notify)
                    for extra in self.also:
                        extra()
            except Exception:  # a sweep must never take the worker down; the next one tries again
                log.exception("sweep failed")

    def stop(self) -> None:
        self.stopping.set()
