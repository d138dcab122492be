"""The retry policy as a table: adding a case is one line."""

from __future__ import annotations

import email.utils
import math

import httpx2
import pytest

from llmq.worker.proxy.errors import (
    InvalidCompletion,
    StreamIncomplete,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
)
from llmq.worker.proxy.retry_policy import RetryPolicy, backoff_delay, is_retryable, next_delay, parse_retry_after

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("error", "retryable"),
    [
        *[(UpstreamStatusError("x", status_code=code), True) for code in (408, 409, 425, 429, 500, 502, 503, 504)],
        *[(UpstreamStatusError("x", status_code=code), False) for code in (400, 401, 403, 404, 413, 422, 501)],
        (UpstreamConnectionError("reset"), True),
        (UpstreamTimeout("slow"), True),
        (InvalidCompletion("not json"), True),
        (StreamIncomplete("cut"), True),
        (UpstreamError("unknown"), False),
    ],
)
def test_what_is_retryable(error: UpstreamError, retryable: bool) -> None:
    assert is_retryable(error) is retryable


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "abc", "retry-after": "9"}, 9.0),
        # Huge but finite: kept here, capped by next_delay (RetryPolicy.retry_after_cap_s).
        ({"retry-after": "1e300"}, 1e300),
        ({"retry-after": email.utils.formatdate(NOW + 10 * 365 * 86400, usegmt=True)}, 10 * 365 * 86400.0),
        ({"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, 253402300799.0 - NOW),
        # Hostile or meaningless values: no hint, so the backoff applies.
        *[({"retry-after": value}, None) for value in (
            "nan", "NaN", "-nan", "inf", "+inf", "-inf", "Infinity", "-Infinity", "1e400", "-1e400",
            "-3", "0", "0.0", "-0", "", "   ", "soon", "2 seconds", "0x10", "1_000", "١٢",
            email.utils.formatdate(NOW - 30, usegmt=True), "Thu, 01 Jan 1970 00:00:00 GMT",
            "Fri, 31 Dec 99999 23:59:59 GMT", "Mon, 01 Jan 2024 00:00:00",  # no zone: ambiguous
            "x" * 10_000, "9" * 5000,
        )],
        *[({"retry-after-ms": value}, None) for value in (
            "nan", "inf", "-inf", "Infinity", "1e400", "-1500", "0", "", "abc",
        )],
        ({"retry-after-ms": "nan", "retry-after": "nan"}, None),
        ({"retry-after-ms": "inf", "retry-after": "3"}, 3.0),
        ({"retry-after-ms": "-1", "retry-after": "3"}, 3.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        # A repeated header reaches us joined ("2, 3"): not a number nor a date, so no hint.
        ([("Retry-After", "2"), ("Retry-After", "3")], None),
        ([("Retry-After", "nan"), ("Retry-After", "2")], None),
        ([("retry-after-ms", "100"), ("retry-after-ms", "200"), ("Retry-After", "4")], 4.0),
        ([("Retry-After", "2")], 2.0),
    ],
)
def test_repeated_headers_as_httpx_joins_them(pairs: list[tuple[str, str]], expected: float | None) -> None:
    assert parse_retry_after(httpx2.Headers(pairs), NOW) == expected


@pytest.mark.parametrize(
    ("attempt", "rand", "expected"),
    [(1, 0.0, 1.0), (2, 0.0, 2.0), (3, 0.0, 4.0), (3, 1.0, 3.0), (10, 0.0, 60.0), (10, 1.0, 45.0)],
)
def test_backoff_grows_is_capped_and_jittered(attempt: int, rand: float, expected: float) -> None:
    assert backoff_delay(attempt, RetryPolicy(base_delay_s=1, max_delay_s=60), rand) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("error", "attempt", "max_attempts", "expected"),
    [
        (UpstreamStatusError("x", status_code=500), 1, 3, 1.0),
        (UpstreamStatusError("x", status_code=500), 3, 3, None),
        (UpstreamStatusError("x", status_code=401), 1, 3, None),
        (UpstreamStatusError("x", status_code=429, retry_after_s=7), 1, 3, 7.0),
        (UpstreamStatusError("x", status_code=429, retry_after_s=500), 1, 3, 120.0),
        (UpstreamStatusError("x", status_code=429, retry_after_s=1e300), 1, 3, 120.0),
        # Whatever reaches next_delay, the delay it hands Celery is a finite number in [0, cap].
        (UpstreamStatusError("x", status_code=429, retry_after_s=math.inf), 1, 3, 1.0),
        (UpstreamStatusError("x", status_code=429, retry_after_s=math.nan), 1, 3, 1.0),
        (UpstreamStatusError("x", status_code=429, retry_after_s=-5), 1, 3, 1.0),
        (UpstreamTimeout("slow"), 2, 5, 2.0),
    ],
)
def test_next_delay(error: UpstreamError, attempt: int, max_attempts: int, expected: float | None) -> None:
    assert next_delay(error, attempt, max_attempts, RetryPolicy(1, 60, 120), rand=0.0) == expected
