"""Lua scripts that change a job's record atomically.

A job's status only moves forward: queued → running ⇄ retrying → succeeded | failed |
cancelled. Each script checks the current status, applies the change, appends the event
to the job's stream and keeps the index of unfinished jobs, in one round trip. A
redelivered message for a finished job therefore finds nothing to do.

The event stream is written only for a job somebody follows: a streaming request, or a job
whose events or long-poll were opened (the WATCH script marks it `watched`, atomically
with reading it). What happened before that is told from the record (`api.event_history`):
every attempt is in it, with its start, outcome and retry delay. A job nobody follows costs
no stream at all: three commands fewer per job.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from llmq.worker import redis_keys
from llmq.worker.jobs.record import TERMINAL
from llmq.worker.redis_keys import EVENTS_MAXLEN

# Any number of jobs in one call (one reply, one Lua call for a whole chunk of a batch).
# KEYS: per job: job, idempotency ('' for none), broker queue ('' to publish separately); then active
# ARGV: ttl_s, then per job: pair_count, now, job_id, broker message, field, value, ...
# No event is written here: a job's `queued` event is always told from its record (api.event_history).
# Returns, per job, the id that answers for it (an earlier job's on an idempotent replay).
SUBMIT = """
local ttl, active = ARGV[1], KEYS[#KEYS]
local ids, a = {}, 2
for k = 1, #KEYS - 1, 3 do
  local pairs_end = a + 3 + 2 * tonumber(ARGV[a])
  local now, id, message = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local existing = KEYS[k + 1] ~= '' and redis.call('GET', KEYS[k + 1])
  if existing then
    ids[#ids + 1] = existing
  else
    redis.call('HSET', KEYS[k], unpack(ARGV, a + 4, pairs_end))
    redis.call('EXPIRE', KEYS[k], ttl)
    redis.call('ZADD', active, now, id)
    if KEYS[k + 1] ~= '' then redis.call('SET', KEYS[k + 1], id, 'EX', ttl) end
    if KEYS[k + 2] ~= '' then redis.call('LPUSH', KEYS[k + 2], message) end
    ids[#ids + 1] = id
  end
  a = pairs_end + 1
end
return ids
"""

# KEYS: job, events
# ARGV: now, lease_until
# Returns {'claimed', attempt, key_token, request, environment, max_attempts, model, callback_status, app_id, stream,
#          relay}
#      or {'missing'} | {'finished', status, callback_status} | {'leased', lease_until}
# One read and one write of the record: every command here counts against the Redis budget per job. The job
# keeps its place in the index of unfinished jobs: the sweeper reads the lease when the entry comes due.
CLAIM = """
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'attempt_count', 'callback_status', 'started_at',
  'key_token', 'request', 'environment', 'max_attempts', 'model', 'app_id', 'watched', 'stream',
  'attempt_started_at', 'relay')
local status = f[1]
if not status then return {'missing'} end
if status == 'succeeded' or status == 'failed' or status == 'cancelled' then
  return {'finished', status, f[4] or ''}
end
local now = tonumber(ARGV[1])
if status == 'running' and tonumber(f[2] or '0') > now then return {'leased', f[2]} end
local n = tonumber(f[3] or '0') + 1
local changes = {'status', 'running', 'attempt_count', n, 'lease_until', ARGV[2], 'updated_at', ARGV[1],
  'attempt_started_at', ARGV[1]}
if not f[5] then
  table.insert(changes, 'started_at')
  table.insert(changes, ARGV[1])
end
if status == 'running' then
  -- The previous holder vanished mid-call (worker lost): its attempt counts, and says so.
  local lost = '{"n":' .. (n - 1) .. (f[14] and (',"started_at":' .. f[14]) or '') ..
    ',"outcome":"worker_lost","error_type":"worker_lost",' ..
    '"message":"the worker holding this attempt stopped before it finished","finished_at":' .. ARGV[1] .. '}'
  local prev = redis.call('HGET', KEYS[1], 'attempts')
  table.insert(changes, 'attempts')
  table.insert(changes, prev and (prev .. '\\n' .. lost) or lost)
end
redis.call('HSET', KEYS[1], unpack(changes))
if f[12] or f[13] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e',
    '{"type":"state","status":"running","attempt":' .. n .. ',"at":' .. ARGV[1] .. '}')
end
return {'claimed', n, f[6], f[7], f[8], f[9], f[10], f[4] or '', f[11] or '', f[13] or '', f[15] or ''}
"""

# KEYS: job, events, active
# ARGV: to_status, allowed_from (',a,b,'), now, event_json, attempt_json ('' for none),
#       terminal ('1'|'0'), job_id, ttl_s, field, value, ...
# A followed job's event stream gets the record's TTL here: the stream is born with the watch, a claim or a
# cancel, and every job ends with this script (the sweeper fails those that never move).
# Returns {'ok', to_status} or {'refused', current_status} or {'missing'}
TRANSITION = """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'next_attempt_at', 'watched', 'stream')
local status = f[1]
if not status then return {'missing'} end
if not string.find(ARGV[2], ',' .. status .. ',', 1, true) then return {'refused', status} end
local changes = {'status', ARGV[1], 'updated_at', ARGV[3]}
for i = 9, #ARGV do table.insert(changes, ARGV[i]) end
if ARGV[5] ~= '' then
  table.insert(changes, 'attempts')
  table.insert(changes, f[2] and (f[2] .. '\\n' .. ARGV[5]) or ARGV[5])
end
if ARGV[6] == '1' then
  table.insert(changes, 'finished_at')
  table.insert(changes, ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(changes))
local followed = f[4] or f[5] == '1'
if followed then redis.call('XADD', KEYS[2], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e', ARGV[4]) end
if ARGV[6] == '1' then
  -- The lease (private) may stay; a retry's due time (public) may not.
  if f[3] then redis.call('HDEL', KEYS[1], 'next_attempt_at') end
  if followed then redis.call('EXPIRE', KEYS[2], ARGV[8]) end
  redis.call('ZREM', KEYS[3], ARGV[7])
else
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[7])
end
return {'ok', ARGV[1]}
"""

# KEYS: job, events
# ARGV: owner
# The record (flat field/value list) and the id of the stream's last event ('0-0' for none), read together. An
# unfinished job of this owner that nobody followed yet is marked `watched` with how far its record tells its
# events: 'R,C', its R attempt records and its attempt count C. From here on every event goes to the stream.
# A stream begun without a mark (a streaming request) holds everything after `queued`: its point is '0,0'.
WATCH = """
local f = redis.call('HGETALL', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = last[1] and last[1][1] or '0-0'
local h = {}
for i = 1, #f, 2 do h[f[i]] = f[i + 1] end
local open = h.status == 'queued' or h.status == 'running' or h.status == 'retrying'
if open and h.owner == ARGV[1] and not h.watched and h.stream ~= '1' then
  local point = '0,0'
  if last_id == '0-0' then
    local records = 0
    if h.attempts then records = select(2, string.gsub(h.attempts, '\\n', '')) + 1 end
    point = records .. ',' .. (h.attempt_count or '0')
  end
  redis.call('HSET', KEYS[1], 'watched', point)
  f[#f + 1] = 'watched'
  f[#f + 1] = point
end
return {f, last_id}
"""

# KEYS: job
# ARGV: allowed callback statuses (',a,b,'), delivery_json ('' for none), field, value, ...
# Returns the callback status before the change, or false if it was not allowed.
UPDATE_CALLBACK = """
local current = redis.call('HGET', KEYS[1], 'callback_status')
if not current or not string.find(ARGV[1], ',' .. current .. ',', 1, true) then return false end
if ARGV[2] ~= '' then
  local prev = redis.call('HGET', KEYS[1], 'deliveries')
  redis.call('HSET', KEYS[1], 'deliveries', prev and (prev .. '\\n' .. ARGV[2]) or ARGV[2])
end
if #ARGV > 2 then redis.call('HSET', KEYS[1], unpack(ARGV, 3)) end
return current
"""

# KEYS: job
# ARGV: now, lease_until
# Takes a finished job's webhook delivery for one attempt, so that two delivery tasks for the
# same job (a redelivered message, a cancel racing a worker) never both send it.
# Returns {'claimed', attempts_made} | {'not_due', next_at} | {'none', callback_status}
CLAIM_DELIVERY = """
local f = redis.call('HMGET', KEYS[1], 'status', 'callback_status', 'callback_lease_until', 'callback_next_at',
  'callback_attempts')
local status, cs = f[1], f[2] or ''
if status ~= 'succeeded' and status ~= 'failed' and status ~= 'cancelled' then return {'none', cs} end
local now = tonumber(ARGV[1])
local open = cs == 'pending' or cs == 'retrying' or (cs == 'delivering' and tonumber(f[3] or '0') < now)
if not open then return {'none', cs} end
if tonumber(f[4] or '0') > now then return {'not_due', f[4]} end
redis.call('HSET', KEYS[1], 'callback_status', 'delivering', 'callback_lease_until', ARGV[2])
return {'claimed', f[5] or '0'}
"""

# The stream's length bound lives in llmq.worker.redis_keys with the key names.
SUBMIT, CLAIM, TRANSITION = (
    script.replace("EVENTS_MAXLEN", str(EVENTS_MAXLEN)) for script in (SUBMIT, CLAIM, TRANSITION)
)


# The arguments of the scripts that both job stores run: built here only, next to the scripts that read them,
# so the worker's store (synchronous) and the API's (asyncio) cannot drift apart.


class ScriptCall(NamedTuple):
    """The KEYS and ARGV of one script call (a tuple: one is made per transition of every job)."""

    keys: list[str]
    args: list[str | int]


def status_set(statuses: Iterable[str]) -> str:
    """Statuses as the scripts match them: ',a,b,'."""
    return "," + ",".join(statuses) + ","


def transition_call(
    job_id: str,
    to_status: str,
    allowed_from: Iterable[str],
    now: float,
    event_json: str,
    ttl_s: int,
    attempt_json: str = "",
    fields: dict[str, str] | None = None,
) -> ScriptCall:
    """TRANSITION: move `job_id` to `to_status` if it is in `allowed_from`, appending `attempt_json` (if any)."""
    args: list[str | int] = [
        to_status, status_set(allowed_from), repr(now), event_json, attempt_json,
        "1" if to_status in TERMINAL else "0", job_id, ttl_s,
    ]
    if fields:
        for pair in fields.items():
            args += pair
    return ScriptCall([redis_keys.job(job_id), redis_keys.job_events(job_id), redis_keys.ACTIVE_JOBS], args)


def update_callback_call(
    job_id: str, allowed: Iterable[str], delivery_json: str = "", fields: dict[str, str] | None = None
) -> ScriptCall:
    """UPDATE_CALLBACK: change the callback's fields if its status is in `allowed`, appending `delivery_json`."""
    args: list[str | int] = [status_set(allowed), delivery_json]
    if fields:
        for pair in fields.items():
            args += pair
    return ScriptCall([redis_keys.job(job_id)], args)
