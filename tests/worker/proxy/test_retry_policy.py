"""The retry policy as a table: adding a case is one line."""

from __future__ import annotations

import email.utils

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
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after": email.utils.formatdate(NOW + 30, usegmt=True)}, 30.0),
        ({"retry-after": email.utils.formatdate(NOW - 30, usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "abc", "retry-after": "9"}, 9.0),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers, NOW) == expected


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
        (UpstreamTimeout("slow"), 2, 5, 2.0),
    ],
)
def test_next_delay(error: UpstreamError, attempt: int, max_attempts: int, expected: float | None) -> None:
    assert next_delay(error, attempt, max_attempts, RetryPolicy(1, 60, 120), rand=0.0) == expected
