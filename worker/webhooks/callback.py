"""Job-finished callbacks: the event body, its Standard Webhooks signature, one delivery, the retry schedule.

Nothing here touches Redis or Celery; the task that owns a callback calls these pieces and
keeps the record of attempts.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx2
from standardwebhooks.webhooks import Webhook

from llmq.worker.proxy.errors import TRANSPORT_ERRORS, transport_error
from llmq.worker.webhooks.callback_guard import PinnedTarget

# Delay before attempt 1, 2, ...: about 27 hours from the first attempt to the last.
DEFAULT_SCHEDULE_S: tuple[float, ...] = (0, 5, 300, 1800, 7200, 18000, 36000, 36000)
EVENT_TYPES = {"succeeded": "job.succeeded", "failed": "job.failed", "cancelled": "job.cancelled",
               "expired": "job.expired"}
SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 16
NEW_SECRET_BYTES = 24
MAX_RESPONSE_BYTES = 64 * 1024
MAX_ERROR_CHARS = 200
USER_AGENT = "llmq-webhooks/1"
_SECRET_RULE = f"must be '{SECRET_PREFIX}' followed by base64 of at least {MIN_SECRET_BYTES} random bytes"


def parse_schedule(spec: str) -> tuple[float, ...]:
    """Delays in seconds from `"0,5,300"`: one or more non-negative numbers."""
    items = [item.strip() for item in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise ValueError(f"webhook schedule must be comma-separated seconds like '0,5,300', got {spec!r}")
    delays = []
    for item in items:
        try:
            delay = float(item)
        except ValueError:
            raise ValueError(f"webhook schedule: {item!r} is not a number of seconds") from None
        if not math.isfinite(delay) or delay < 0:
            raise ValueError(f"webhook schedule: {item!r} must be a finite number of seconds, 0 or more")
        delays.append(delay)
    return tuple(delays)


def next_delay_s(attempts_made: int, schedule: tuple[float, ...] = DEFAULT_SCHEDULE_S) -> float | None:
    """The wait before the next attempt, or None once every scheduled attempt was made."""
    if attempts_made < 0:
        raise ValueError("attempts_made must be 0 or more")
    return schedule[attempts_made] if attempts_made < len(schedule) else None


def check_secret(secret: str) -> str:
    """A Standard Webhooks signing secret, `whsec_<base64>`, long enough to be worth signing with."""
    if not isinstance(secret, str) or not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"webhook secret {_SECRET_RULE}")
    encoded = secret[len(SECRET_PREFIX) :]
    # The library decodes leniently (it skips stray characters), so the base64 is checked strictly here.
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        Webhook(secret)
    except Exception:  # the library's own errors (e.g. an empty key) share no base class
        raise ValueError(f"webhook secret {_SECRET_RULE}") from None
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"webhook secret {_SECRET_RULE}")
    return secret


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(NEW_SECRET_BYTES)).decode("ascii")


def webhook_id(job_id: str) -> str:
    """The same on every attempt, so a receiver can drop duplicates."""
    return f"msg_{job_id}"


def build_event(job: dict[str, Any], now: float) -> bytes:
    """The JSON body for a finished job, as `GET /v1/jobs/{id}` shows it."""
    status = job.get("status")
    event_type = EVENT_TYPES.get(status) if isinstance(status, str) else None
    if event_type is None:
        raise ValueError(f"no webhook event for job status {status!r}; expected one of {sorted(EVENT_TYPES)}")
    stamp = datetime.fromtimestamp(now, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {"type": event_type, "timestamp": stamp, "data": job}
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signed_headers(secret: str, msg_id: str, timestamp: int, payload: bytes) -> dict[str, str]:
    """The Standard Webhooks headers for `payload`, plus content type and user agent."""
    at = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(secret).sign(msg_id, at, payload.decode("utf-8"))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
    }


@dataclass(frozen=True)
class DeliveryResult:
    """How one attempt went: the receiver's status, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300

    @property
    def gone(self) -> bool:
        """410: the receiver asks for no more callbacks to this URL."""
        return self.status_code == 410

    def to_record(self, n: int, at: float) -> dict[str, Any]:
        return {
            "n": n,
            "at": at,
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": self.duration_ms,
        }


def _clip(message: str) -> str:
    return message if len(message) <= MAX_ERROR_CHARS else message[: MAX_ERROR_CHARS - 3] + "..."


async def deliver(
    client: httpx2.AsyncClient,
    target: PinnedTarget,
    headers: dict[str, str],
    payload: bytes,
    timeout_s: float = 15.0,
) -> DeliveryResult:
    """POST once to the pinned address, all of it within `timeout_s`; every outcome is a result, never an exception.

    The deadline covers the whole exchange, connection to last byte read: a receiver that keeps every
    single read short (a header line at a time) is still cut off, and the attempt counts as failed.
    """
    send_headers = {k: v for k, v in headers.items() if k.lower() != "host"}
    send_headers["host"] = target.host_header
    extensions: dict[str, Any] = {}
    if target.scheme == "https":
        # TLS and the certificate check use the name; the TCP connection goes to the checked address.
        extensions["sni_hostname"] = target.host
        # The pool is keyed by address, not name: no reuse, so a connection verified for one
        # name never carries a request for another.
        send_headers["connection"] = "close"
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream(
                "POST",
                target.request_url,
                content=payload,
                headers=send_headers,
                extensions=extensions,
                timeout=timeout_s,
                follow_redirects=False,
            ) as response:
                await _drain(response)
                status = response.status_code
    except TimeoutError:
        return DeliveryResult(None, deadline_error(timeout_s), _ms_since(start))
    except TRANSPORT_ERRORS as err:
        return DeliveryResult(None, _clip(transport_error(err, "the receiver").message), _ms_since(start))
    error = "redirect not followed" if 300 <= status < 400 else None
    return DeliveryResult(status, error, _ms_since(start))


def deadline_error(timeout_s: float) -> str:
    return f"no complete answer within the delivery deadline ({timeout_s:g} s, LLMQ_WEBHOOK_TIMEOUT_S)"


async def _drain(response: httpx2.Response) -> None:
    """Read (raw, undecoded) at most MAX_RESPONSE_BYTES of the body and drop it."""
    if response.is_stream_consumed:
        return  # already in memory (a transport that answers in one piece): nothing to read
    seen = 0
    async for chunk in response.aiter_raw():
        seen += len(chunk)
        if seen >= MAX_RESPONSE_BYTES:
            break


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def make_client(max_connections: int = 100) -> httpx2.AsyncClient:
    """A client for callbacks: no redirects, no proxies or settings from the environment, no cookies kept."""
    return httpx2.AsyncClient(
        follow_redirects=False,
        trust_env=False,
        # Receivers must not be able to plant cookies that a later callback to the same address would carry.
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        timeout=httpx2.Timeout(15.0),
    )


__all__ = [
    "DEFAULT_SCHEDULE_S",
    "EVENT_TYPES",
    "DeliveryResult",
    "build_event",
    "check_secret",
    "deadline_error",
    "deliver",
    "make_client",
    "new_secret",
    "next_delay_s",
    "parse_schedule",
    "signed_headers",
    "webhook_id",
]
