"""When to try the proxy again, and how long to wait first.

The whole policy: which errors are retryable (by type and status), the backoff with
jitter, and the proxy's own Retry-After hints. The delay chosen here is handed to
Celery's `Task.retry(countdown=...)`, so there is one source of truth.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
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


# A delay as the proxy may write it: ASCII decimal, optionally with a fraction or exponent. float() alone also
# takes "nan", "inf", "1_000" and non-ASCII digits.
_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


def _usable(seconds: float | None) -> float | None:
    """A wait worth honouring: a finite number above zero (the cap is applied by `next_delay`)."""
    return seconds if seconds is not None and math.isfinite(seconds) and seconds > 0 else None


def _decimal(raw: str) -> float | None:
    raw = raw.strip()
    return float(raw) if _DECIMAL.fullmatch(raw) else None


def _http_date(raw: str, now: float) -> float | None:
    try:
        parsed = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    if parsed.tzinfo is None:  # no zone: the moment is ambiguous
        return None
    return parsed.timestamp() - now


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the proxy asks us to wait: `retry-after-ms`, or `Retry-After` in seconds or HTTP-date.

    None when neither header holds a finite wait above zero (NaN, infinities, negative, a past date, not a
    number), so the backoff applies instead. A repeated header arrives joined ("2, 3") and is no hint either."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        value = _decimal(millis)
        seconds = _usable(value / 1000 if value is not None else None)
        if seconds is not None:
            return seconds
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _decimal(raw)
    return _usable(value if value is not None else _http_date(raw, now))


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
    hint = _usable(err.retry_after_s)
    if hint is not None:
        return min(hint, policy.retry_after_cap_s)
    return backoff_delay(attempt, policy, rand)
