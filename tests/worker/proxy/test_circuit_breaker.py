"""The shared circuit breaker, against a real Redis: when it opens, for how long, and when it closes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.proxy.circuit_breaker import (
    CLOSED_RECHECK_S,
    TRIP_FAILURES,
    WINDOW_S,
    Admission,
    CircuitBreaker,
    proxy_down,
)
from llmq.worker.proxy.errors import UpstreamConnectionError, UpstreamStatusError, UpstreamTimeout
from llmq.worker.proxy.retry_policy import RetryPolicy

NOW = 1_800_000_000.0
PROBE_LEASE_S = 5.0


@pytest.fixture
def breaker(redis_server: RedisServer) -> Iterator[CircuitBreaker]:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9", decode_responses=True)
    client.flushdb()  # db 9 belongs to this test module alone
    yield CircuitBreaker(client, RetryPolicy(base_delay_s=2.0, max_delay_s=10.0), probe_lease_s=PROBE_LEASE_S)
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
    # Half-open after the cool-down: one more failure opens it again at once, for twice as long.
    assert breaker.failed("test", NOW + 4) == NOW + 4 + 4.0


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


def trip(breaker: CircuitBreaker, at: float) -> float:
    for i in range(TRIP_FAILURES):
        until = breaker.failed("test", at + i * 0.01)
    return until


def test_closed_lets_every_line_call(breaker: CircuitBreaker) -> None:
    assert breaker.closed("test", NOW)
    assert breaker.admit("test", NOW) == Admission()
    for i in range(TRIP_FAILURES - 1):  # failures below the trip: still closed
        breaker.failed("test", NOW + i * 0.01)
    assert breaker.admit("test", NOW + 1) == Admission()


def test_open_holds_every_line_until_the_cool_down_ends(breaker: CircuitBreaker) -> None:
    until = trip(breaker, NOW)
    assert not breaker.closed("test", NOW + 0.5)
    for at in (NOW + 0.5, NOW + 1.5):
        admission = breaker.admit("test", at)
        assert not admission.probe and until - at <= admission.wait_s <= until - at + 1.0  # plus jitter


def test_half_open_lets_exactly_one_probe_through(breaker: CircuitBreaker) -> None:
    until = trip(breaker, NOW)
    assert breaker.admit("test", until + 0.1) == Admission(probe=True)
    # Every other line, in this process or another, waits for the probe's verdict: another cool-down (2 s), or
    # until the probe's permit lapses, the sooner.
    other = CircuitBreaker(breaker.redis, breaker.policy, probe_lease_s=PROBE_LEASE_S)
    for at, who, wait_s in ((until + 0.2, breaker, 2.0), (until + 0.3, other, 2.0),
                            (until + 4, other, until + 0.1 + PROBE_LEASE_S - (until + 4))):
        admission = who.admit("test", at)
        assert not admission.probe and wait_s <= admission.wait_s <= wait_s + 1.0  # plus jitter
    assert not breaker.closed("test", until + 0.2)  # half-open is not closed


def test_the_probes_success_closes_it(breaker: CircuitBreaker) -> None:
    until = trip(breaker, NOW)
    assert breaker.admit("test", until + 0.1).probe
    breaker.recovered("test", until + 0.2)
    assert breaker.admit("test", until + 0.3) == Admission()
    other = CircuitBreaker(breaker.redis, breaker.policy, probe_lease_s=PROBE_LEASE_S)
    assert other.closed("test", until + 0.3) and other.admit("test", until + 0.3) == Admission()
    # Forgotten: it takes a full trip again to open it, for the base delay.
    assert trip(breaker, until + 1) == pytest.approx(until + 1 + (TRIP_FAILURES - 1) * 0.01 + 2.0)


def test_the_probes_failure_opens_it_again_for_longer_up_to_the_cap(breaker: CircuitBreaker) -> None:
    until = trip(breaker, NOW)
    cool_downs = []
    for _ in range(5):
        assert breaker.admit("test", until + 0.1).probe
        reopened = breaker.failed("test", until + 0.2)
        cool_downs.append(round(reopened - (until + 0.2), 6))
        assert not breaker.admit("test", until + 0.3).probe  # open again: no second probe
        until = reopened
    assert cool_downs == [4.0, 8.0, 10.0, 10.0, 10.0]  # doubled from the base 2 s, capped at 10 s


def test_a_lost_probe_is_replaced_when_its_permit_lapses(breaker: CircuitBreaker) -> None:
    until = trip(breaker, NOW)
    assert breaker.admit("test", until + 0.1).probe  # its worker dies: no verdict ever comes
    assert not breaker.admit("test", until + 0.1 + PROBE_LEASE_S - 0.01).probe
    assert breaker.admit("test", until + 0.1 + PROBE_LEASE_S + 0.01).probe


def test_closed_is_read_from_redis_about_once_a_second(breaker: CircuitBreaker) -> None:
    other = CircuitBreaker(breaker.redis, breaker.policy, probe_lease_s=PROBE_LEASE_S)
    assert other.closed("test", NOW)
    trip(breaker, NOW)  # another process trips it
    assert other.closed("test", NOW + CLOSED_RECHECK_S / 2)  # not read again yet
    assert not other.closed("test", NOW + CLOSED_RECHECK_S)
    assert not breaker.closed("test", NOW + 0.1)  # the process that tripped it knows at once
