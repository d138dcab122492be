"""A batch's webhook: OpenAI's event on a terminal status, signed afresh on every attempt.

`callback_url` and `callback_secret` come as extra body fields of `POST /v1/batches` (an llmq extension:
OpenAI sets webhooks per project). The event is OpenAI's shape, `{"id": "evt_…", "object": "event",
"created_at", "type": "batch.completed" | …, "data": {"id": <batch id>}}`, so the SDK's
`client.webhooks.unwrap(body, headers, secret=...)` returns the typed event. The delivery reuses the jobs'
pieces: the Standard Webhooks signature, the SSRF guard with the checked address pinned, the retry schedule,
and the callback bookkeeping script, here on the batch's record.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from llmq.worker import redis_keys
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import TERMINAL
from llmq.worker.observability import metrics
from llmq.worker.runtime.event_loop import wait
from llmq.worker.secrets.key_vault import InvalidToken
from llmq.worker.webhooks.callback import next_delay_s, signed_headers
from llmq.worker.webhooks.callback_guard import CallbackRefused
from llmq.worker.webhooks.delivery import (
    DELIVERY_LEASE_MARGIN_S,
    HELD,
    DeliveryStep,
    attempt,
    max_hold_s,
    signing_secret,
)

log = logging.getLogger("llmq.webhooks")
EVENT_TYPES = {"completed": "batch.completed", "failed": "batch.failed", "expired": "batch.expired",
               "cancelled": "batch.cancelled"}

# The jobs' delivery claim, for a batch's terminal statuses.
def _terminal_table(statuses: Any) -> str:
    return "local terminal = {" + ", ".join(f"{status} = true" for status in sorted(statuses)) + "}"


_JOB_TERMINAL = _terminal_table(TERMINAL)
_BATCH_TERMINAL = _terminal_table(EVENT_TYPES)
if _JOB_TERMINAL not in job_scripts.CLAIM_DELIVERY:
    raise RuntimeError("the jobs' CLAIM_DELIVERY script changed: adapt the batch's claim (llmq.worker.batches.webhook)")
CLAIM_DELIVERY = job_scripts.CLAIM_DELIVERY.replace(_JOB_TERMINAL, _BATCH_TERMINAL)


def event_id(batch_id: str) -> str:
    """The same on every attempt (it is also the `webhook-id`), so a receiver can drop duplicates."""
    return "evt_" + batch_id.removeprefix("batch_")


def batch_event(fields: dict[str, str]) -> bytes:
    status = fields["status"]
    stamp = fields.get(f"{status}_at") or fields.get("created_at") or "0"
    event = {"id": event_id(fields["id"]), "object": "event", "created_at": int(float(stamp)),
             "type": EVENT_TYPES[status], "data": {"id": fields["id"]}}
    return json.dumps(event, separators=(",", ":")).encode()


def _update(rt: Runtime, batch_id: str, delivery: dict[str, Any], **fields: str) -> None:
    args: list[str] = [f",{','.join(HELD)},", json.dumps(delivery)]
    for pair in fields.items():
        args += pair
    rt.redis.eval(job_scripts.UPDATE_CALLBACK, 1, redis_keys.batch(batch_id), *args)


def run_batch_delivery(rt: Runtime, batch_id: str) -> DeliveryStep:
    """One attempt at a finished batch's webhook; the next is scheduled as for jobs."""
    now = time.time()
    lease_s = rt.settings.webhook_timeout_s + DELIVERY_LEASE_MARGIN_S
    state, detail = rt.redis.eval(CLAIM_DELIVERY, 1, redis_keys.batch(batch_id), repr(now), repr(now + lease_s))
    if state == "not_due":
        return DeliveryStep(again_in_s=min(float(detail) - now, max_hold_s(rt)), outcome="not yet due")
    if state != "claimed":
        return DeliveryStep(outcome=f"nothing to deliver ({detail or 'no callback'})")
    n = int(detail) + 1
    fields = cast(dict[str, str], rt.redis.hgetall(redis_keys.batch(batch_id)))
    url = json.loads(fields["callback"])["url"]
    extra = {"batch_id": batch_id, "attempt": n}
    try:
        secret = signing_secret(rt, fields)
        if secret is None:
            raise CallbackRefused("no signing secret: the batch has none and LLMQ_WEBHOOK_SECRET is not set")
        payload = batch_event(fields)
        # A fresh timestamp and signature on each attempt: receivers refuse old timestamps (the SDK, after 5 min).
        headers = signed_headers(secret, event_id(batch_id), int(now), payload)
        # The name lookup and the POST on the worker's loop, under one deadline (as for jobs).
        result = wait(attempt(url, rt.settings.callback_allow_list, headers, payload, rt.settings.webhook_timeout_s,
                              rt.settings.webhook_concurrency))
    except (CallbackRefused, InvalidToken) as err:
        reason = str(err) if isinstance(err, CallbackRefused) else "the batch's callback secret cannot be decrypted"
        _update(rt, batch_id, {"n": n, "at": now, "status_code": None, "error": f"refused: {reason}",
                               "duration_ms": 0.0}, callback_status="failed", callback_attempts=str(n))
        log.warning("batch callback refused: %s", reason, extra=extra)
        metrics.WEBHOOK_DELIVERIES.labels("refused").inc()
        return DeliveryStep(outcome="refused")
    record = result.to_record(n, now)
    if result.ok or result.gone:
        status = "delivered" if result.ok else "gone"
        _update(rt, batch_id, record, callback_status=status, callback_attempts=str(n))
        metrics.WEBHOOK_DELIVERIES.labels(status).inc()
        return DeliveryStep(outcome=status)
    delay = next_delay_s(n, rt.settings.webhook_schedule)
    if delay is None:
        _update(rt, batch_id, record, callback_status="failed", callback_attempts=str(n))
        metrics.WEBHOOK_DELIVERIES.labels("failed").inc()
        return DeliveryStep(outcome="failed")
    _update(rt, batch_id, record, callback_status="retrying", callback_attempts=str(n),
            callback_next_at=repr(now + delay))
    metrics.WEBHOOK_DELIVERIES.labels("retrying").inc()
    return DeliveryStep(again_in_s=min(delay, max_hold_s(rt)), outcome="retrying")
