"""A circuit breaker shared by every worker, per proxy environment: when the proxy is down for everyone,
batch lines back off together instead of each on its own backoff.

A failure that says the proxy itself is down (no connection, a timeout, 502/503/504) is counted in Redis;
`TRIP_FAILURES` of them within `WINDOW_S` open the breaker for the base delay, doubled on each trip in a row
up to the policy's cap. While it is open, a failing batch line waits until it closes (plus jitter), and the
batch feeder queues no new lines. Any success after a failure closes it and forgets the trips. Only failures
and the first success after them touch Redis: a healthy call costs nothing.
"""

from __future__ import annotations

import random
import time

import redis

from llmq.worker import redis_keys
from llmq.worker.proxy.errors import UpstreamConnectionError, UpstreamError
from llmq.worker.proxy.retry_policy import RetryPolicy

PROXY_DOWN_STATUS = frozenset({502, 503, 504})
TRIP_FAILURES = 10
WINDOW_S = 10.0
JITTER_S = 1.0

# KEYS: breaker; ARGV: now, window_s, trip_failures, base_open_s, max_open_s
# Counts one proxy-down failure; returns when the breaker closes (now or earlier: closed).
FAILED = """
local f = redis.call('HMGET', KEYS[1], 'since', 'failures', 'open_until', 'trips')
local now = tonumber(ARGV[1])
local open_until = tonumber(f[3] or '0')
if open_until > now then return tostring(open_until) end
local since, failures, trips = tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[4] or '0')
if now - since > tonumber(ARGV[2]) then since, failures = now, 0 end
failures = failures + 1
if failures >= tonumber(ARGV[3]) then
  trips = trips + 1
  open_until = now + math.min(tonumber(ARGV[4]) * 2 ^ (trips - 1), tonumber(ARGV[5]))
  since, failures = now, 0
end
redis.call('HSET', KEYS[1], 'since', tostring(since), 'failures', failures, 'open_until', tostring(open_until),
  'trips', trips)
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5]) * 4 + tonumber(ARGV[2])))
return tostring(open_until)
"""


def proxy_down(err: UpstreamError) -> bool:
    """The proxy itself unreachable or failing, as opposed to refusing this one request."""
    return isinstance(err, UpstreamConnectionError) or err.status_code in PROXY_DOWN_STATUS


class CircuitBreaker:
    def __init__(self, client: redis.Redis, policy: RetryPolicy) -> None:
        self.redis = client
        self.policy = policy

    def failed(self, environment: str, now: float | None = None) -> float:
        """Count a proxy-down failure; the time the breaker closes (in the past: it is closed)."""
        now = time.time() if now is None else now
        reply = self.redis.eval(FAILED, 1, redis_keys.breaker(environment), repr(now), WINDOW_S, TRIP_FAILURES,
                                self.policy.base_delay_s, self.policy.max_delay_s)
        return float(reply)

    def open_for_s(self, environment: str, now: float | None = None) -> float:
        """Seconds until the breaker closes; 0 when it is closed."""
        now = time.time() if now is None else now
        until = self.redis.hget(redis_keys.breaker(environment), "open_until")
        return max(float(until or 0) - now, 0.0)

    def recovered(self, environment: str) -> None:
        self.redis.delete(redis_keys.breaker(environment))

    def delay_s(self, environment: str, own_delay_s: float, now: float | None = None) -> float:
        """A failing line's wait: its own backoff, or until the breaker closes (spread by jitter), the longer."""
        now = time.time() if now is None else now
        open_until = self.failed(environment, now)
        if open_until <= now:
            return own_delay_s
        return max(own_delay_s, open_until - now + random.uniform(0, JITTER_S))
