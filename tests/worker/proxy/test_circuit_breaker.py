"""The shared circuit breaker, against a real Redis: when it opens, for how long, and when it closes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.proxy.circuit_breaker import TRIP_FAILURES, WINDOW_S, CircuitBreaker, proxy_down
from llmq.worker.proxy.errors import UpstreamConnectionError, UpstreamStatusError, UpstreamTimeout
from llmq.worker.proxy.retry_policy import RetryPolicy

NOW = 1_800_000_000.0


@pytest.fixture
def breaker(redis_server: RedisServer) -> Iterator[CircuitBreaker]:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9", decode_responses=True)
    client.flushdb()  # db 9 belongs to this test module alone
    yield CircuitBreaker(client, RetryPolicy(base_delay_s=2.0, max_delay_s=10.0))
    client.close()


@pytest.mark.parametrize(("err", "down"), [
    (UpstreamConnectionError("refused"), True),
    (UpstreamTimeout("read timed out"), True),
    (UpstreamStatusError("bad gateway", status_code=502), True),
    (UpstreamStatusError("unavailable", status_code=503), True),
    (UpstreamStatusError("overloaded", status_code=429), False),  # the proxy is up and says "slower"
    (UpstreamStatusError("server error", status_code=500), False),
    (UpstreamStatusError("bad request", status_code=400), False),
])
def test_proxy_down(err: UpstreamStatusError, down: bool) -> None:
    assert proxy_down(err) is down


def test_opens_after_enough_failures_in_the_window_and_doubles_per_trip(breaker: CircuitBreaker) -> None:
    for i in range(TRIP_FAILURES - 1):
        assert breaker.failed("test", NOW + i * 0.1) <= NOW + i * 0.1  # still closed
    assert breaker.open_for_s("test", NOW + 1) == 0
    assert breaker.failed("test", NOW + 1) == NOW + 1 + 2.0  # opens for the base delay
    assert breaker.open_for_s("test", NOW + 2) == pytest.approx(1.0)
    assert breaker.open_for_s("prod", NOW + 2) == 0  # per environment
    assert breaker.failed("test", NOW + 2) == NOW + 3.0  # failures while open change nothing
    for i in range(TRIP_FAILURES):  # closed again, and failing again: the second trip lasts twice as long
        until = breaker.failed("test", NOW + 4 + i * 0.1)
    assert until == pytest.approx(NOW + 4 + (TRIP_FAILURES - 1) * 0.1 + 4.0)


def test_failures_spread_wider_than_the_window_never_open_it(breaker: CircuitBreaker) -> None:
    for i in range(3 * TRIP_FAILURES):
        assert breaker.failed("test", NOW + i * WINDOW_S / (TRIP_FAILURES - 2)) <= NOW + i * WINDOW_S


def test_a_success_closes_it_and_forgets_the_trips(breaker: CircuitBreaker) -> None:
    for i in range(TRIP_FAILURES):
        breaker.failed("test", NOW + i * 0.01)
    assert breaker.open_for_s("test", NOW + 0.5) > 0
    breaker.recovered("test")
    assert breaker.open_for_s("test", NOW + 0.5) == 0


def test_a_failing_line_waits_for_the_breaker_with_jitter(breaker: CircuitBreaker) -> None:
    delays = [breaker.delay_s("test", 0.5, NOW + i * 0.01) for i in range(TRIP_FAILURES + 3)]
    assert delays[:TRIP_FAILURES - 1] == [0.5] * (TRIP_FAILURES - 1)
    assert all(1.5 <= d <= 2.0 + 1.0 for d in delays[TRIP_FAILURES - 1:])
