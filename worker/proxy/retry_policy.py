"""When to try the proxy again, and how long to wait first.

The whole policy: which errors are retryable (by type and status), the backoff with
jitter, and the proxy's own Retry-After hints. The delay chosen here is handed to
Celery's `Task.retry(countdown=...)`, so there is one source of truth.
"""

from __future__ import annotations

import email.utils
import random
from collections.abc import Mapping
from dataclasses import dataclass

from llmq.worker.proxy.errors import (
    InvalidCompletion,
    StreamIncomplete,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
)

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
JITTER_FRACTION = 0.25


@dataclass(frozen=True)
class RetryPolicy:
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    retry_after_cap_s: float = 120.0


def is_retryable(err: UpstreamError) -> bool:
    if isinstance(err, UpstreamStatusError):
        return err.status_code in RETRYABLE_STATUS
    return isinstance(err, UpstreamConnectionError | InvalidCompletion | StreamIncomplete)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the proxy asks us to wait: `retry-after-ms`, or `Retry-After` in seconds or HTTP-date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000
        except ValueError:
            value = -1
        if value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if parsed.tzinfo is None:
            return None
        seconds = parsed.timestamp() - now
    return max(seconds, 0.0)


def backoff_delay(attempt: int, policy: RetryPolicy, rand: float | None = None) -> float:
    """Exponential backoff after the `attempt`-th failure (1-based), less up to 25% jitter."""
    rand = random.random() if rand is None else rand
    delay = min(policy.base_delay_s * 2 ** (attempt - 1), policy.max_delay_s)
    return delay * (1 - JITTER_FRACTION * rand)


def next_delay(
    err: UpstreamError, attempt: int, max_attempts: int, policy: RetryPolicy, rand: float | None = None
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up now."""
    if attempt >= max_attempts or not is_retryable(err):
        return None
    if err.retry_after_s is not None:
        return min(err.retry_after_s, policy.retry_after_cap_s)
    return backoff_delay(attempt, policy, rand)
