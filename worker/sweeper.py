"""The last line of defence: find jobs that nothing will move on, and move them on.

The broker redelivers a lost worker's messages by itself. The sweeper is for what slips
past that: a message lost with its broker, an API that died between recording a job
and publishing it, a retry whose message vanished. One worker at a time sweeps (a Redis
lock), every `sweep_interval_s`, on a thread of its own.

The same thread runs two frequent checks, each also by one worker at a time:
- deadlines (every `deadline_check_s`): a job still waiting at its deadline ends `expired`;
- leases (every `lease_check_s`, Redis broker only): a call whose job's lease lapsed (its worker is gone:
  a live worker renews the leases of its long calls, `llmq.worker.proxy.in_flight`) has its message handed
  back to the queue at once, rather than after the broker's visibility timeout. RabbitMQ hands a lost
  worker's messages back by itself as soon as its connection drops.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis

from llmq.worker import redis_keys
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs import unfinished
from llmq.worker.jobs.record import deadline_error, job_error
from llmq.worker.observability import metrics
from llmq.worker.runtime.redis_transport import deliveries_before, push_back, task_of

log = logging.getLogger("llmq.sweeper")
MAX_REQUEUES = 3
CALL_TASK = "llmq.call_proxy"
BATCH = 500  # due entries one sweep looks at, shared between the partitions it visits
MIN_SHARE = 20  # ... though each partition visited gets at least this many
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
    """Publish overdue jobs again; fail (and `notify` the callbacks of) those that never move.

    Walks the partitions of the index of unfinished jobs in use (`llmq.worker.jobs.unfinished`), a bounded number
    per sweep, each for at most its share of `BATCH` due entries, and drops those found empty from the list."""
    now = time.time() if now is None else now
    report = SweepReport()
    unfinished.adopt_legacy(rt.redis, now)  # what a previous version left in its single index
    listed = unfinished.partitions_to_sweep(rt.redis)
    share = max(BATCH // max(len(listed), 1), MIN_SHARE)
    for partition in listed:
        _sweep_partition(rt, publish, partition, now, share, notify, report)
        unfinished.drop_if_empty(rt.redis, partition, now)
    if report.requeued or report.failed:
        log.warning("sweep: published again %d stuck job(s), failed %d", len(report.requeued), len(report.failed))
    return report


def _sweep_partition(
    rt: Runtime, publish: Publish, partition: str, now: float, limit: int, notify: Callable[[str], None],
    report: SweepReport,
) -> None:
    settings = rt.settings
    horizon = now - min(settings.visibility_timeout_s, settings.stuck_after_s)
    names = ("status", "lease_until", "next_attempt_at", "updated_at", "model", "priority", "requeues",
             "attempt_count", "requeued_at_attempt")
    due = cast(list[str], rt.redis.zrangebyscore(partition, 0, horizon, start=0, num=limit))
    for job_id in due:
        values = cast(list[str | None], rt.redis.hmget(redis_keys.job(job_id), names))
        fields = {name: value for name, value in zip(names, values, strict=True) if value is not None}
        if "status" not in fields:  # expired with its TTL, unfinished: its event stream never got one
            rt.redis.delete(redis_keys.job_events(job_id))
            rt.redis.zrem(partition, job_id)
            report.forgotten += 1
            continue
        due_at = overdue_at(fields, settings.visibility_timeout_s, settings.stuck_after_s)
        if due_at is None:  # finished: its own last change should have taken it out
            rt.redis.zrem(partition, job_id)
            continue
        if due_at >= now:
            # Alive (a claim leaves the job's entry as it was, to save a command per job): come back to it
            # in the sweep after it could be overdue. Never before the job's submission (a lease, a retry's due
            # time are after it): the submit script's self-healing relies on that (llmq.worker.jobs.unfinished).
            rt.redis.zadd(partition, {job_id: due_at - (now - horizon)}, xx=True)
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
        pipe.zadd(partition, {job_id: now}, xx=True)  # not again before another full period
        pipe.execute()
        queue = redis_keys.QUEUE_BY_PRIORITY.get(fields.get("priority", ""), "llmq.normal")
        publish(job_id, fields.get("model", ""), queue)
        report.requeued.append(job_id)


def expire_overdue(rt: Runtime, now: float | None = None, notify: Callable[[str], None] = lambda _: None) -> list[str]:
    """End `expired` every waiting job whose deadline has passed; the ids of those ended."""
    now = time.time() if now is None else now
    expired: list[str] = []
    due = cast(list[str], rt.redis.zrangebyscore(redis_keys.DEADLINES, 0, now, start=0, num=BATCH))
    for job_id in due:
        status, lease_until, deadline = cast(
            list[str | None], rt.redis.hmget(redis_keys.job(job_id), ["status", "lease_until", "deadline"])
        )
        if status in ("queued", "retrying") and deadline is not None:
            if rt.store.expire(job_id, deadline_error(float(deadline))):
                metrics.JOBS_FINISHED.labels("expired").inc()
                expired.append(job_id)
                notify(job_id)
            # Refused: it was claimed in between; the next check looks at it again.
        elif status == "running":
            # An attempt started before the deadline runs to its end; its job is looked at again once its lease
            # could have lapsed (the claim of a taken-back job expires it).
            rt.redis.zadd(redis_keys.DEADLINES, {job_id: max(float(lease_until or 0), now + 1)}, xx=True)
        else:  # finished, or gone with its TTL
            rt.redis.zrem(redis_keys.DEADLINES, job_id)
    if expired:
        log.info("deadline check: %d job(s) expired", len(expired))
    return expired


def take_back_lapsed(rt: Runtime, broker: redis.Redis, now: float | None = None) -> list[str]:
    """Hand back to their queues the calls whose job's lease lapsed; the ids of those jobs."""
    now = time.time() if now is None else now
    taken: list[str] = []
    # A call delivered less than a lease ago cannot have a lapsed lease yet.
    for member in deliveries_before(broker, now - rt.lease_s, BATCH):
        task = task_of(member)
        if task is None or task[0] != CALL_TASK or not task[1] or task[2] not in redis_keys.QUEUES_IN_ORDER:
            continue
        job_id = str(task[1][0])
        status, lease_until = cast(list[str | None], rt.redis.hmget(redis_keys.job(job_id), ["status", "lease_until"]))
        if status == "running" and float(lease_until or 0) < now and push_back(broker, member, task[2]):
            taken.append(job_id)
    if taken:
        log.warning("lease check: %d call(s) of a lost worker handed back: %s", len(taken), ", ".join(taken[:10]))
    return taken


def broker_redis(url: str) -> redis.Redis | None:
    """A client of the broker when it is a Redis (where unacknowledged deliveries can be read); None otherwise."""
    if not url.startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=10)


@dataclass
class _Periodic:
    """One of the sweeper thread's jobs: run by one worker at a time (a lock), about every `interval_s`."""

    interval_s: float
    lock: str
    run: Callable[[], object]
    due_at: float = 0.0

    def schedule(self, now: float) -> None:
        self.due_at = now + self.interval_s * random.uniform(0.8, 1.2)


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
        settings = rt.settings
        self.jobs = [
            _Periodic(settings.sweep_interval_s, redis_keys.SWEEPER_LOCK, self._sweep),
            _Periodic(settings.deadline_check_s, redis_keys.DEADLINES_LOCK,
                      lambda: expire_overdue(self.rt, notify=self.notify)),
        ]
        broker = broker_redis(settings.effective_broker_url)
        if broker is not None:
            self.jobs.append(_Periodic(settings.lease_check_s, redis_keys.LEASES_LOCK,
                                       lambda: take_back_lapsed(self.rt, broker)))
        now = time.time()
        for job in self.jobs:
            job.schedule(now)

    def _sweep(self) -> None:
        sweep(self.rt, self.publish, notify=self.notify)
        for extra in self.also:
            extra()

    def run(self) -> None:
        while not self.stopping.wait(max(min(job.due_at for job in self.jobs) - time.time(), 0)):
            now = time.time()
            for job in self.jobs:
                if job.due_at > now:
                    continue
                job.schedule(now)
                try:
                    if self.rt.redis.set(job.lock, "1", nx=True, px=max(int(job.interval_s * 1000), 100)):
                        job.run()
                except Exception:  # a sweep must never take the worker down; the next one tries again
                    log.exception("%s failed", job.lock)

    def stop(self) -> None:
        self.stopping.set()
