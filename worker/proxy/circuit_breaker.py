"""A circuit breaker shared by every worker, per proxy environment: when the proxy is down for everyone,
batch lines back off together instead of each on its own backoff.

Closed: a failure that says the proxy itself is down (no connection, a timeout, 502/503/504) is counted in
Redis; `TRIP_FAILURES` of them within `WINDOW_S` open the breaker for the base delay.
Open: no batch line calls; a line that comes up waits until the cool-down ends (plus jitter), and the batch
feeder queues no new lines.
Half-open (the cool-down is over, no success seen since): one line at a time is let through as the probe (its
permit lasts as long as a call may). Its success closes the breaker and forgets the trips; its failure, or any
other proxy-down failure, opens it again at once for twice the last cool-down, up to the policy's cap.

A healthy call costs nothing in Redis: each process remembers for `CLOSED_RECHECK_S` that it saw the breaker
closed, and only failures and the first success after them write.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import redis

from llmq.worker import redis_keys
from llmq.worker.proxy.errors import UpstreamConnectionError, UpstreamError
from llmq.worker.proxy.retry_policy import RetryPolicy

PROXY_DOWN_STATUS = frozenset({502, 503, 504})
TRIP_FAILURES = 10
WINDOW_S = 10.0
JITTER_S = 1.0
CLOSED_RECHECK_S = 1.0  # how stale a process's "closed" may be: a call at most this late sees it opened

# KEYS: breaker; ARGV: now, window_s, trip_failures, base_open_s, max_open_s
# Counts one proxy-down failure; returns when the breaker closes (now or earlier: closed). A failure while it is
# half-open (tripped before, cool-down over) opens it again at once; a closed one opens after `trip_failures`.
FAILED = """
local f = redis.call('HMGET', KEYS[1], 'since', 'failures', 'open_until', 'trips')
local now = tonumber(ARGV[1])
local open_until = tonumber(f[3] or '0')
if open_until > now then return tostring(open_until) end
local since, failures, trips = tonumber(f[1] or '0'), tonumber(f[2] or '0'), tonumber(f[4] or '0')
if now - since > tonumber(ARGV[2]) then since, failures = now, 0 end
failures = failures + 1
if trips > 0 or failures >= tonumber(ARGV[3]) then
  trips = trips + 1
  open_until = now + math.min(tonumber(ARGV[4]) * 2 ^ (trips - 1), tonumber(ARGV[5]))
  since, failures = now, 0
end
redis.call('HSET', KEYS[1], 'since', tostring(since), 'failures', failures, 'open_until', tostring(open_until),
  'trips', trips, 'probe_until', '0')
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[5]) * 4 + tonumber(ARGV[2])))
return tostring(open_until)
"""

# KEYS: breaker; ARGV: now, probe_lease_s, base_open_s, max_open_s
# May a batch line call? Returns {'closed'} | {'probe'} (half-open, and this call is its one probe)
#      | {'wait', until} (open: until its cool-down ends; half-open with another call probing: until the probe's
#        permit lapses, or one more cool-down, the sooner, so a probe's success is followed soon).
ADMIT = """
local f = redis.call('HMGET', KEYS[1], 'open_until', 'trips', 'probe_until')
local now, trips = tonumber(ARGV[1]), tonumber(f[2] or '0')
if trips == 0 then return {'closed'} end
local open_until = tonumber(f[1] or '0')
if open_until > now then return {'wait', tostring(open_until)} end
local probe_until = tonumber(f[3] or '0')
if probe_until > now then
  local cool_down = math.min(tonumber(ARGV[3]) * 2 ^ (trips - 1), tonumber(ARGV[4]))
  return {'wait', tostring(math.min(probe_until, now + cool_down))}
end
redis.call('HSET', KEYS[1], 'probe_until', tostring(now + tonumber(ARGV[2])))
return {'probe'}
"""


def proxy_down(err: UpstreamError) -> bool:
    """The proxy itself unreachable or failing, as opposed to refusing this one request."""
    return isinstance(err, UpstreamConnectionError) or err.status_code in PROXY_DOWN_STATUS


@dataclass(frozen=True)
class Admission:
    """A batch line's permission to call: now (`wait_s` 0), as the half-open breaker's probe, or after `wait_s`."""

    wait_s: float = 0.0
    probe: bool = False


class CircuitBreaker:
    def __init__(self, client: redis.Redis, policy: RetryPolicy, probe_lease_s: float) -> None:
        self.redis = client
        self.policy = policy
        self.probe_lease_s = probe_lease_s
        self._closed_seen_at: dict[str, float] = {}  # environment -> when this process last saw it closed

    def failed(self, environment: str, now: float | None = None) -> float:
        """Count a proxy-down failure; the time the breaker closes (in the past: it is closed)."""
        now = time.time() if now is None else now
        reply = self.redis.eval(FAILED, 1, redis_keys.breaker(environment), repr(now), WINDOW_S, TRIP_FAILURES,
                                self.policy.base_delay_s, self.policy.max_delay_s)
        if float(reply) > now:
            self._closed_seen_at.pop(environment, None)
        return float(reply)

    def open_for_s(self, environment: str, now: float | None = None) -> float:
        """Seconds until the breaker's cool-down ends; 0 when it is closed or half-open."""
        now = time.time() if now is None else now
        until = self.redis.hget(redis_keys.breaker(environment), "open_until")
        return max(float(until or 0) - now, 0.0)

    def closed(self, environment: str, now: float | None = None) -> bool:
        """Never tripped, or a success since; read from Redis at most once a `CLOSED_RECHECK_S` while so."""
        now = time.time() if now is None else now
        if now - self._closed_seen_at.get(environment, float("-inf")) < CLOSED_RECHECK_S:
            return True
        if int(self.redis.hget(redis_keys.breaker(environment), "trips") or 0):
            return False
        self._closed_seen_at[environment] = now
        return True

    def admit(self, environment: str, now: float | None = None) -> Admission:
        """May a batch line call now? For a breaker not `closed`: only after its cool-down, one line at a time."""
        now = time.time() if now is None else now
        reply = self.redis.eval(ADMIT, 1, redis_keys.breaker(environment), repr(now), self.probe_lease_s,
                                self.policy.base_delay_s, self.policy.max_delay_s)
        if reply[0] == "closed":
            self._closed_seen_at[environment] = now
            return Admission()
        if reply[0] == "probe":
            return Admission(probe=True)
        return Admission(wait_s=float(reply[1]) - now + random.uniform(0, JITTER_S))

    def recovered(self, environment: str, now: float | None = None) -> None:
        self.redis.delete(redis_keys.breaker(environment))
        self._closed_seen_at[environment] = time.time() if now is None else now

    def delay_s(self, environment: str, own_delay_s: float, now: float | None = None) -> float:
        """A failing line's wait: its own backoff, or until the breaker's cool-down ends (spread by jitter), the
        longer."""
        now = time.time() if now is None else now
        open_until = self.failed(environment, now)
        if open_until <= now:
            return own_delay_s
        return max(own_delay_s, open_until - now + random.uniform(0, JITTER_S))
