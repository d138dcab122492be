"""Flow control shared by every worker: per-model and per-app concurrency and requests per minute.

Celery's own `rate_limit` counts per worker process; these limits live in Redis, so they hold
across any number of workers. Before a job is claimed, one Lua script checks and takes
everything its call needs at once (cooldowns after a 429, RPM cells, concurrency slots): either
all of it is granted, or nothing is taken and the caller learns how long to wait. A job held back
this way has not spent an attempt; the task simply asks Celery to run it again a little later.

- Concurrency: a sorted set of holder tokens per model / app, scored by lease expiry, so a slot
  of a crashed worker frees itself when its lease runs out.
- Requests per minute: GCRA (generic cell rate algorithm) without burst: one key per limit holds
  the theoretical arrival time of the next request; calls are spaced evenly, 60/RPM seconds apart.
- Cooldown: after a 429 (when enabled) the model and the app are paused for the Retry-After.
"""

from __future__ import annotations

import logging
import random
import re
import time
import uuid
from dataclasses import dataclass

import redis

from llmq.worker import redis_keys

log = logging.getLogger("llmq.flow")

ANY = "*"
_NAME = re.compile(r"[^\s,=]+")

# Waiting jobs come back at least this soon and at most this late, so they keep re-checking.
MIN_WAIT_S = 0.05
MAX_WAIT_S = 2.0
# A full concurrency limit gives no time to wait for (slots free when calls end): re-check after this.
CONCURRENCY_RECHECK_S = 0.25
# Countdowns are stretched by up to this fraction, so jobs held together do not all return together.
JITTER_FRACTION = 0.2
# Statuses a job can be run from; other jobs skip flow control and go straight to the claim.
RUNNABLE = ("queued", "retrying", "running")


@dataclass(frozen=True)
class LimitTable:
    """Limits by name (model or app id), `*` for any name not listed; empty means no limit."""

    named: tuple[tuple[str, int], ...] = ()
    default: int | None = None

    def __bool__(self) -> bool:
        return bool(self.named) or self.default is not None

    def get(self, name: str) -> int | None:
        for listed, limit in self.named:
            if listed == name:
                return limit
        return self.default

    @classmethod
    def parse(cls, spec: str | None) -> LimitTable:
        """`gpt-4o=20,gemini-1.5-pro=50,*=100` → a table; raises ValueError saying what is wrong."""
        named: dict[str, int] = {}
        default: int | None = None
        for item in (spec or "").split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, raw = item.rpartition("=")
            name, raw = name.strip(), raw.strip()
            if not sep or not _NAME.fullmatch(name):
                raise ValueError(f"{item!r} is not NAME=LIMIT; expected a comma list like 'gpt-4o=20,*=100'")
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"the limit of {name!r} must be a whole number >= 1, got {raw!r}")
            if name in named or (name == ANY and default is not None):
                raise ValueError(f"{name!r} is listed twice")
            if name == ANY:
                default = int(raw)
            else:
                named[name] = int(raw)
        return cls(tuple(named.items()), default)


@dataclass(frozen=True)
class FlowLimits:
    """Every flow-control setting, parsed once."""

    model_concurrency: LimitTable = LimitTable()
    app_concurrency: LimitTable = LimitTable()
    model_rpm: LimitTable = LimitTable()
    app_rpm: LimitTable = LimitTable()
    cooldown_on_429: bool = False

    @property
    def enabled(self) -> bool:
        tables = (self.model_concurrency, self.app_concurrency, self.model_rpm, self.app_rpm)
        return self.cooldown_on_429 or any(tables)


# KEYS: the job's partition of the index of unfinished jobs, cooldown keys..., rpm keys..., concurrency keys...
# ARGV: job_id, now_ms ('' = the Redis server's clock), token, lease_ms, n_cooldown, n_rpm,
#       interval_ms per rpm key..., limit per concurrency key...
# Returns {'ok'} with everything taken, or {'wait', limit, key_index, wait_ms} with nothing taken.
ACQUIRE = """
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local n_cool, n_rpm = tonumber(ARGV[5]), tonumber(ARGV[6])
local first_rpm, first_conc = 2 + n_cool, 2 + n_cool + n_rpm

local function deny(limit, index, wait_ms)
  -- The job is alive, only held back: keep the sweeper from taking it for a lost one.
  if ARGV[1] ~= '' then redis.call('ZADD', KEYS[1], 'XX', now / 1000, ARGV[1]) end
  return {'wait', limit, index, math.ceil(wait_ms)}
end

-- Cooldowns first: while the proxy has asked us to back off, nothing else matters.
local longest, which = 0, 0
for k = 2, first_rpm - 1 do
  local ttl = redis.call('PTTL', KEYS[k])
  if ttl > longest then longest, which = ttl, k end
end
if which > 0 then return deny('cooldown', which, longest) end

-- RPM cells: a request may go once the theoretical arrival time has come.
local tats = {}
for k = first_rpm, first_conc - 1 do
  local tat = tonumber(redis.call('GET', KEYS[k]) or '0')
  if tat < now then tat = now end
  if tat - now > longest then longest, which = tat - now, k end
  tats[k] = tat
end
if which > 0 then return deny('rpm', which, longest) end

-- Concurrency slots: drop holders whose lease ran out (a crashed worker's), then count.
for k = first_conc, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  if redis.call('ZCARD', KEYS[k]) >= tonumber(ARGV[6 + n_rpm + k - first_conc + 1]) then
    return deny('concurrency', k, 0)
  end
end

-- Everything is free: take it all.
for k = first_rpm, first_conc - 1 do
  local tat = tats[k] + tonumber(ARGV[6 + k - first_rpm + 1])
  redis.call('SET', KEYS[k], string.format('%.3f', tat), 'PX', math.max(math.ceil(tat - now), 1))
end
local lease = tonumber(ARGV[4])
for k = first_conc, #KEYS do
  redis.call('ZADD', KEYS[k], now + lease, ARGV[3])
  redis.call('PEXPIRE', KEYS[k], math.ceil(lease))
end
return {'ok'}
"""

# KEYS: concurrency keys; ARGV: token
RELEASE = """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return #KEYS
"""

# KEYS: cooldown keys; ARGV: ms. A cooldown is only ever lengthened, never cut short.
COOL_DOWN = """
for _, key in ipairs(KEYS) do
  if redis.call('PTTL', key) < tonumber(ARGV[1]) then redis.call('SET', key, '1', 'PX', ARGV[1]) end
end
return #KEYS
"""


@dataclass(frozen=True)
class Grant:
    """Slots held for one call; give them back with `FlowControl.release`."""

    token: str = ""
    slot_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wait:
    """Held back: by which limit (`concurrency`, `rpm`, `cooldown`), whose (`model`, `app`), and how long."""

    limit: str
    scope: str
    wait_s: float

    def countdown_s(self, max_wait_s: float = MAX_WAIT_S, rand: float | None = None) -> float:
        """When the task should look again: the wait, bounded and jittered."""
        base = self.wait_s if self.wait_s > 0 else CONCURRENCY_RECHECK_S
        base = min(max(base, MIN_WAIT_S), max_wait_s)
        rand = random.random() if rand is None else rand
        return base * (1 + JITTER_FRACTION * rand)


class FlowControl:
    def __init__(
        self, client: redis.Redis, limits: FlowLimits, lease_s: float, max_wait_s: float = MAX_WAIT_S
    ) -> None:
        self.redis = client
        self.limits = limits
        self.lease_ms = lease_s * 1000
        self.max_wait_s = max_wait_s
        self._acquire = client.register_script(ACQUIRE)
        self._release = client.register_script(RELEASE)
        self._cool_down = client.register_script(COOL_DOWN)

    def admit(self, job_id: str) -> Grant | Wait:
        """Read the job's model and app, and take what its call needs (a job that will not run needs nothing)."""
        model, app_id, status, lease_until, partition = self.redis.hmget(
            redis_keys.job(job_id), ["model", "app_id", "status", "lease_until", "quota_set"]
        )
        if status not in RUNNABLE:
            return Grant()  # missing or finished: the claim says so
        if status == "running" and lease_until and float(lease_until) > time.time():
            return Grant()  # another delivery holds it: the claim says so
        return self.acquire(str(model or ""), str(app_id or ""), job_id=job_id, partition=str(partition or ""))

    def acquire(
        self, model: str, app_id: str, *, job_id: str = "", partition: str | None = None, now_ms: float | None = None
    ) -> Grant | Wait:
        """Everything a call of `model` for `app_id` needs, all at once, or the wait; nothing taken on a wait.

        A wait moves `job_id`'s entry in its `partition` of the index of unfinished jobs (the record's `quota_set`;
        a record without one is in the previous version's single index) to now, so the sweeper leaves it alone."""
        names = {"model": model, "app": app_id}
        cool: list[tuple[str, str]] = []
        if self.limits.cooldown_on_429:
            cool = [(redis_keys.flow("cooldown", scope, name), scope) for scope, name in names.items() if name]
        rpm = self._limited("rpm", names, self.limits.model_rpm, self.limits.app_rpm)
        conc = self._limited("concurrency", names, self.limits.model_concurrency, self.limits.app_concurrency)
        if not (cool or rpm or conc):
            return Grant()  # nothing applies to this call: no round trip
        token = uuid.uuid4().hex
        every = [*cool, *((key, scope) for key, scope, _ in rpm), *((key, scope) for key, scope, _ in conc)]
        args: list[str | int] = [
            job_id, "" if now_ms is None else repr(now_ms), token, repr(self.lease_ms), len(cool), len(rpm),
            *(repr(60_000 / limit) for _, _, limit in rpm), *(limit for _, _, limit in conc),
        ]
        index = partition or redis_keys.LEGACY_ACTIVE_JOBS
        reply = self._acquire(keys=[index, *(key for key, _ in every)], args=args)
        if reply[0] == "ok":
            return Grant(token, tuple(key for key, _, _ in conc)) if conc else Grant()
        _, limit, index, wait_ms = reply
        return Wait(limit, every[int(index) - 2][1], int(wait_ms) / 1000)

    def release(self, grant: Grant) -> None:
        """Give the slots back; if Redis is unreachable, their lease frees them."""
        if not grant.slot_keys:
            return
        try:
            self._release(keys=list(grant.slot_keys), args=[grant.token])
        except redis.RedisError as err:
            log.warning("concurrency slots not released (%s); they free themselves when the lease ends", err)

    def cool_down(self, model: str, app_id: str, seconds: float) -> None:
        """Pause calls of this model and of this app for `seconds` (after the proxy answered 429)."""
        ms = int(seconds * 1000)
        cool = [redis_keys.flow("cooldown", scope, name) for scope, name in (("model", model), ("app", app_id)) if name]
        if ms > 0 and cool and self.limits.cooldown_on_429:
            self._cool_down(keys=cool, args=[ms])

    @staticmethod
    def _limited(
        kind: str, names: dict[str, str], model_table: LimitTable, app_table: LimitTable
    ) -> list[tuple[str, str, int]]:
        found = []
        for scope, table in (("model", model_table), ("app", app_table)):
            limit = table.get(names[scope]) if names[scope] else None
            if limit is not None:
                found.append((redis_keys.flow(kind, scope, names[scope]), scope, limit))
        return found
