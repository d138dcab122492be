"""Delivering a finished job to its callback URL: one attempt at a time, on a schedule.

The schedule reaches about a day, far beyond how long a broker should hold an
unacknowledged message, so a delivery that is not yet due asks to be looked at again
after at most `max_hold_s`: Celery's retry hops there, and nothing waits in memory.

An attempt (the name lookup, the connection, the request and the answer) runs on the worker's
event loop under one deadline, `LLMQ_WEBHOOK_TIMEOUT_S`: whatever the receiver does, the attempt
ends by then, and one that did not get a whole answer in time is a failed attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import time
from dataclasses import dataclass

import httpx2

from llmq.worker.job_runner import Runtime
from llmq.worker.jobs.view import job_json
from llmq.worker.observability import metrics
from llmq.worker.runtime.event_loop import wait
from llmq.worker.secrets.key_vault import InvalidToken
from llmq.worker.webhooks.callback import (
    DeliveryResult,
    build_event,
    deadline_error,
    deliver,
    make_client,
    next_delay_s,
    signed_headers,
    webhook_id,
)
from llmq.worker.webhooks.callback_guard import AllowList, CallbackRefused, resolve_and_check_async

log = logging.getLogger("llmq.webhooks")
HELD = ("delivering",)  # what a claimed delivery may be moved on from
DELIVERY_LEASE_MARGIN_S = 10.0


@dataclass(frozen=True)
class DeliveryStep:
    """What the task should do next: look again after `again_in_s`, or nothing."""

    again_in_s: float | None = None
    outcome: str = ""


@functools.lru_cache(maxsize=1)
def webhook_client(max_connections: int) -> httpx2.AsyncClient:
    """The process's client for callbacks, used on its event loop only."""
    return make_client(max_connections)


async def attempt(
    url: str, allow: AllowList, headers: dict[str, str], payload: bytes, timeout_s: float, max_connections: int
) -> DeliveryResult:
    """Look the host up, check and pin it, and POST: all of it within `timeout_s`. Raises CallbackRefused."""
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            target = await resolve_and_check_async(url, allow)
            result = await deliver(webhook_client(max_connections), target, headers, payload, timeout_s)
    except TimeoutError:
        result = DeliveryResult(None, deadline_error(timeout_s), 0.0)
    return dataclasses.replace(result, duration_ms=round((time.perf_counter() - start) * 1000, 1))


def max_hold_s(rt: Runtime) -> float:
    # Well inside the visibility timeout, so a waiting delivery is never redelivered twice.
    return max(rt.settings.visibility_timeout_s / 3, 1.0)


def signing_secret(rt: Runtime, fields: dict[str, str]) -> str | None:
    token = fields.get("callback_secret_token")
    if token:
        return rt.vault.decrypt(token)
    return rt.settings.webhook_secret.get_secret_value() if rt.settings.webhook_secret else None


def run_delivery(rt: Runtime, job_id: str) -> DeliveryStep:
    now = time.time()
    lease_s = rt.settings.webhook_timeout_s + DELIVERY_LEASE_MARGIN_S
    state, detail = rt.store.claim_delivery(job_id, now, lease_s)
    if state == "not_due":
        return DeliveryStep(again_in_s=min(float(detail) - now, max_hold_s(rt)), outcome="not yet due")
    if state != "claimed":
        return DeliveryStep(outcome=f"nothing to deliver ({detail or 'no callback'})")
    n = int(detail) + 1
    fields = rt.store.fields(job_id)
    url = json.loads(fields["callback"])["url"]
    extra = {"job_id": job_id, "attempt": n}
    settings = rt.settings
    try:
        secret = signing_secret(rt, fields)
        if secret is None:
            raise CallbackRefused("no signing secret: the job has none and LLMQ_WEBHOOK_SECRET is not set")
        payload = build_event(job_json(fields), now)
        headers = signed_headers(secret, webhook_id(job_id), int(now), payload)
        # A name lookup and a receiver can each take seconds: awaited on the loop, where the deadline can cut them.
        result = wait(attempt(url, settings.callback_allow_list, headers, payload, settings.webhook_timeout_s,
                              settings.webhook_concurrency))
    except (CallbackRefused, InvalidToken) as err:
        reason = str(err) if isinstance(err, CallbackRefused) else "the job's callback secret cannot be decrypted"
        record = {"n": n, "at": now, "status_code": None, "error": f"refused: {reason}", "duration_ms": 0.0}
        rt.store.update_callback(job_id, HELD, record, callback_status="failed", callback_attempts=str(n))
        log.warning("callback refused: %s", reason, extra=extra)
        metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
        return DeliveryStep(outcome="refused")

    record = result.to_record(n, now)
    if result.ok or result.gone:
        status = "delivered" if result.ok else "gone"
        rt.store.update_callback(job_id, HELD, record, callback_status=status, callback_attempts=str(n))
        log.info("callback %s", status, extra={**extra, "status_code": result.status_code})
        metrics.WEBHOOK_DELIVERIES.labels(status).inc()
        return DeliveryStep(outcome=status)
    delay = next_delay_s(n, rt.settings.webhook_schedule)
    if delay is None:
        rt.store.update_callback(job_id, HELD, record, callback_status="failed", callback_attempts=str(n))
        log.warning("callback failed for good after %d attempts", n, extra={**extra, "status_code": result.status_code})
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        return DeliveryStep(outcome="failed")
    rt.store.update_callback(job_id, HELD, record, callback_status="retrying", callback_attempts=str(n),
                             callback_next_at=repr(now + delay))
    log.info("callback attempt failed; next in %gs", delay, extra={**extra, "status_code": result.status_code})
    metrics.WEBHOOK_DELIVERIES.labels("retrying").inc()
    return DeliveryStep(again_in_s=min(delay, max_hold_s(rt)), outcome="retrying")
