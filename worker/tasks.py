"""Celery tasks: thin wrappers that hand work to plain functions and ask Celery to retry."""

from __future__ import annotations

import functools
import logging
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject

from llmq.worker import redis_keys
from llmq.worker.batches.runner import BatchRuntime, step
from llmq.worker.batches.webhook import run_batch_delivery
from llmq.worker.celery_app import app
from llmq.worker.files.store import open_store
from llmq.worker.job_runner import run_attempt, runtime
from llmq.worker.jobs.record import job_error
from llmq.worker.webhooks.delivery import run_delivery

log = logging.getLogger("llmq.worker")


class JobFailed(Exception):
    """The job ended `failed`; raised so Flower shows the task as FAILURE."""


class JobExpired(Exception):
    """The job ended `expired` (its deadline came before its next attempt); Flower shows the task as FAILURE."""


@app.task(bind=True, name="llmq.call_proxy", max_retries=None, throws=(JobFailed, JobExpired))
def call_proxy(self: Task, job_id: str) -> str:
    """Make one attempt at a job's proxy call; schedule the next through Celery's retry."""
    try:
        outcome = run_attempt(runtime(), job_id)
    except redis.RedisError as err:
        # Job storage is unreachable: hand the message back rather than lose track of the job.
        raise Reject(f"job storage unavailable ({type(err).__name__})", requeue=True) from err
    except Exception as err:
        # A fault of llmq's own: say so on the job at once rather than leave it running for the sweeper.
        log.exception("attempt crashed", extra={"job_id": job_id})
        error = job_error("internal_error", f"llmq failed while running this job ({type(err).__name__})")
        if runtime().store.fail_unfinished(job_id, error):
            enqueue_delivery(job_id)
        raise
    if outcome.notify:
        enqueue_delivery(job_id)
    if outcome.retry_in_s is not None:
        raise self.retry(countdown=outcome.retry_in_s)
    if outcome.error is not None:
        raise JobFailed(f"{outcome.error['type']}: {outcome.error['message']}")
    if outcome.expired is not None:
        raise JobExpired(f"{outcome.expired['type']}: {outcome.expired['message']}")
    return outcome.skipped or "succeeded"


@app.task(bind=True, name="llmq.deliver_webhook", max_retries=None)
def deliver_webhook(self: Task, job_id: str) -> str:
    """POST a finished job to its callback URL; retried on the webhook schedule, never touching the job."""
    try:
        step = run_delivery(runtime(), job_id)
    except redis.RedisError as err:
        raise Reject(f"job storage unavailable ({type(err).__name__})", requeue=True) from err
    if step.again_in_s is not None:
        raise self.retry(countdown=step.again_in_s)
    return step.outcome


def enqueue(job_id: str, model: str, queue: str, **options: Any) -> None:
    """Publish a job; Flower shows its id and model, never anything secret."""
    call_proxy.apply_async(
        args=[job_id], queue=queue, argsrepr=f"({job_id!r}, model={model!r})", kwargsrepr="{}", **options
    )


def enqueue_many(jobs: list[tuple[str, str, str]]) -> None:
    """Publish (job id, model, queue) triples over one producer connection."""
    with app.producer_or_acquire() as producer:
        for job_id, model, queue in jobs:
            enqueue(job_id, model, queue, producer=producer)


def enqueue_delivery(job_id: str) -> None:
    deliver_webhook.apply_async(args=[job_id], queue=redis_keys.WEBHOOK_QUEUE)


@functools.lru_cache(maxsize=1)
def batch_runtime() -> BatchRuntime:
    rt = runtime()
    return BatchRuntime(rt, open_store(rt.settings), enqueue_many, enqueue_batch_delivery)


@app.task(bind=True, name="llmq.batch_step", max_retries=None)
def batch_step(self: Task, batch_id: str) -> str:
    """One step of an OpenAI batch (validate, collect, feed, finalize); the next is scheduled while it runs."""
    try:
        more = step(batch_runtime(), batch_id)
    except redis.RedisError as err:
        raise Reject(f"job storage unavailable ({type(err).__name__})", requeue=True) from err
    if more:
        enqueue_batch_step(batch_id, countdown=runtime().settings.batch_step_interval_s)
    return "more" if more else "done"


def enqueue_batch_step(batch_id: str, countdown: float | None = None) -> None:
    """Publish a batch's next step; the sweeper publishes one again for a batch whose chain was lost."""
    batch_step.apply_async(args=[batch_id], queue=redis_keys.BATCH_QUEUE, countdown=countdown)


@app.task(bind=True, name="llmq.deliver_batch_webhook", max_retries=None)
def deliver_batch_webhook(self: Task, batch_id: str) -> str:
    """POST a finished batch's event to its callback URL; retried on the webhook schedule."""
    try:
        step = run_batch_delivery(runtime(), batch_id)
    except redis.RedisError as err:
        raise Reject(f"job storage unavailable ({type(err).__name__})", requeue=True) from err
    if step.again_in_s is not None:
        raise self.retry(countdown=step.again_in_s)
    return step.outcome


def enqueue_batch_delivery(batch_id: str) -> None:
    deliver_batch_webhook.apply_async(args=[batch_id], queue=redis_keys.WEBHOOK_QUEUE)
