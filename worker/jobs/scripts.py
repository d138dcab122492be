"""Lua scripts that change a job's record atomically.

A job's status only moves forward: queued → running ⇄ retrying → succeeded | failed |
cancelled | expired. Each script checks the current status, applies the change, appends the event
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
from llmq.worker.redis_keys import CANCELS_CHANNEL, EVENTS_MAXLEN

# `local terminal = {...}` for a script that asks whether a status is final.
_TERMINAL_TABLE = "local terminal = {" + ", ".join(f"{status} = true" for status in sorted(TERMINAL)) + "}"

# A whole batch, or a whole group of single POSTs (api.group_commit), in one call: all of its jobs are recorded or
# none. The `#!lua` line declares the script's flags (none): Redis then refuses the whole call while it is over
# maxmemory, before its first write, where a script without it would be stopped at its first write that needs
# memory, after the ones that did not. Everything that can fail or refuse (the idempotency keys' reads, the
# quotas, the keys the proxy rejected) is read before the first write; a script stopped midway is not undone.
# Per caller (one owner and its app id): its rejected-key marker, its app's partition of the index of unfinished
# jobs (llmq.worker.jobs.unfinished: the app's quota, counted with ZCARD) and its own jobs' index (the listing's:
# every job of the owner, finished or not, scored by submission time); per job, its record.
# The partition added to is marked in use (the sweeper walks those), unless the API marked it lately itself.
# With fair turns (docs/fairness.md), a job goes to its broker queue only while its app has fewer unfinished jobs
# than `direct_jobs` (counted by the partition, already read); the others go to the app's ready list for that queue,
# and an app whose ready lists were empty enters the set of apps waiting for a turn, which rings the doorbell.
# KEYS: partitions in use, known apps, unknown apps' partition, deadlines, fair apps, doorbell; per caller: rejected
#       marker, app partition, owner's index; per job: job, idempotency ('' for none), broker queue ('' to publish
#       separately)
# ARGV: ttl_s, stale_before, app_limit, unknown_limit, caller_count, owner index's TTL, direct_jobs ('' for no fair
#       turns); per caller: app name, flags
#       ('k': the app id is known, no need to look; 'r': look for the rejected-key marker; 't': trim the owner's
#       index of entries older than a record's TTL and renew its own TTL; 'p' / 'u': the app's / the unknown apps'
#       partition was marked in use lately, no need to mark it; the API skips what it did lately);
#       per job: caller index, pair_count, now, job_id, broker message, deadline ('' for none), field, value, ...
# No event is written here: a job's `queued` event is always told from its record (api.event_history).
# Returns, per job, the id that answers for it (an earlier job's on an idempotent replay), or its caller's refusal:
# '!rejected_key:<ms left>' | '!app_quota' | '!unknown_app_quota'; then one character per caller: 'k' if its app
# id is known, '-' otherwise; then one per caller: 'm' if its partition was marked in use here, '-' otherwise.
SUBMIT = """#!lua
local partitions, known, unknown, deadlines = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local ttl, stale_before = ARGV[1], ARGV[2]
local app_limit, unknown_limit, callers = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local index_ttl, direct_jobs, fair_apps, doorbell = ARGV[6], tonumber(ARGV[7]), KEYS[5], KEYS[6]
local jobs, need, seen = {}, {}, {}
local k, a = 7 + 3 * callers, 8 + 2 * callers
while k <= #KEYS do
  local job = {c = tonumber(ARGV[a]), key = KEYS[k], idem = KEYS[k + 1], queue = KEYS[k + 2],
               now = ARGV[a + 2], id = ARGV[a + 3], message = ARGV[a + 4], deadline = ARGV[a + 5]}
  job.first, job.last = a + 6, a + 5 + 2 * tonumber(ARGV[a + 1])
  if job.idem ~= '' then
    if seen[job.idem] then job.same_as = seen[job.idem] else job.existing = redis.call('GET', job.idem) end
    seen[job.idem] = seen[job.idem] or #jobs + 1
  end
  if not job.existing and not job.same_as then need[job.c] = (need[job.c] or 0) + 1 end
  jobs[#jobs + 1] = job
  k, a = k + 3, job.last + 1
end
local refusal, quota_of, counts, known_apps, places, marks = {}, {}, {}, {}, {}, {}
for c = 1, callers do
  if need[c] then
    local flags = ARGV[7 + 2 * c]
    local left = string.find(flags, 'r', 1, true) and redis.call('PTTL', KEYS[4 + 3 * c]) or -2
    if left > 0 then
      refusal[c] = '!rejected_key:' .. left
    else
      local set, limit, name = KEYS[5 + 3 * c], app_limit, '!app_quota'
      if not string.find(flags, 'k', 1, true) and redis.call('SISMEMBER', known, ARGV[6 + 2 * c]) == 0 then
        set, limit, name = unknown, unknown_limit, '!unknown_app_quota'
      end
      known_apps[c] = set ~= unknown and 'k' or '-'
      counts[set] = counts[set] or redis.call('ZCARD', set)
      if counts[set] + need[c] > limit then
        -- Self-healing: entries older than a record's TTL belong to records gone without a last transition. An
        -- entry's score is its submission time or a later time (when the sweeper is to look at it again, a retry's,
        -- a wait's: llmq.worker.jobs.unfinished), never earlier, and a record lives a TTL from its submission:
        -- so what is scored before `stale_before` is a record expired, never a live job.
        redis.call('ZREMRANGEBYSCORE', set, '-inf', '(' .. stale_before)
        counts[set] = redis.call('ZCARD', set)
      end
      if counts[set] + need[c] > limit then
        refusal[c] = name
      else
        places[c] = counts[set]  -- unfinished jobs ahead of this caller's new ones
        if not string.find(flags, set == unknown and 'u' or 'p', 1, true) then
          marks[set] = true
        end
        counts[set] = counts[set] + need[c]
        quota_of[c] = set
      end
    end
  end
end
local function bulk(command, key, items)
  for i = 1, #items, 1000 do  -- unpack's stack is bounded
    redis.call(command, key, unpack(items, i, math.min(i + 999, #items)))
  end
end
local ids, by_set, by_owner, by_queue, due, waiting = {}, {}, {}, {}, {}, {}
for i, job in ipairs(jobs) do
  if job.existing then
    ids[i] = job.existing
  elseif job.same_as then
    ids[i] = ids[job.same_as]
  elseif refusal[job.c] then
    ids[i] = refusal[job.c]
  else
    local set = quota_of[job.c]
    redis.call('HSET', job.key, 'quota_set', set, unpack(ARGV, job.first, job.last))
    redis.call('EXPIRE', job.key, ttl)
    if job.idem ~= '' then redis.call('SET', job.idem, job.id, 'EX', ttl) end
    if job.deadline ~= '' then
      due[#due + 1] = job.deadline
      due[#due + 1] = job.id
    end
    by_set[set] = by_set[set] or {}
    table.insert(by_set[set], job.now)
    table.insert(by_set[set], job.id)
    by_owner[job.c] = by_owner[job.c] or {}
    table.insert(by_owner[job.c], job.now)
    table.insert(by_owner[job.c], job.id)
    if job.queue ~= '' then
      local queue = job.queue
      if direct_jobs then
        places[job.c] = places[job.c] + 1
        if places[job.c] > direct_jobs then
          queue = 'FAIR_READY_PREFIX' .. ARGV[6 + 2 * job.c] .. ':' .. job.queue
          waiting[job.c] = (waiting[job.c] or 0) + 1
        end
      end
      by_queue[queue] = by_queue[queue] or {}
      table.insert(by_queue[queue], job.message)
    end
    ids[i] = job.id
  end
end
bulk('ZADD', deadlines, due)
for set, items in pairs(by_set) do
  bulk('ZADD', set, items)
  -- Scored by a submission time (never lowered): the sweeper keeps an empty partition listed a while after.
  if marks[set] then redis.call('ZADD', partitions, 'GT', items[1], set) end
end
for c, items in pairs(by_owner) do
  local index = KEYS[6 + 3 * c]
  bulk('ZADD', index, items)
  -- Kept bounded: what is older than a record's TTL lists nothing; the key outlives its newest entry's record.
  if string.find(ARGV[7 + 2 * c], 't', 1, true) then
    redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. stale_before)
    redis.call('EXPIRE', index, index_ttl)
  end
end
for queue, messages in pairs(by_queue) do bulk('LPUSH', queue, messages) end
local rings = 0
for c, n in pairs(waiting) do
  -- An app entering starts level with the app served last (TAKE lifts its 0); a worker may be idle: wake one per
  -- job, up to a few.
  if redis.call('ZADD', fair_apps, 'NX', 0, ARGV[6 + 2 * c]) == 1 then rings = rings + n end
end
if rings > 0 then
  local bells = {}
  for i = 1, math.min(rings, 16) do bells[i] = '1' end
  redis.call('LPUSH', doorbell, unpack(bells))
end
local told, marked = {}, {}
for c = 1, callers do
  told[c] = known_apps[c] or '-'
  marked[c] = quota_of[c] and by_set[quota_of[c]] and marks[quota_of[c]] and 'm' or '-'
end
ids[#ids + 1] = table.concat(told)
ids[#ids + 1] = table.concat(marked)
return ids
"""

# KEYS: job, events, deadlines
# ARGV: now, lease_until, job_id, expired_event_json, expired_error_json, ttl_s
# Returns {'claimed', attempt, key_token, request, environment, max_attempts, model, callback_status, app_id, stream,
#         deadline, relay}
#      or {'missing'} | {'finished', status, callback_status} | {'leased', lease_until}
#      or {'expired', callback_status}: the job's deadline had passed, and the job now ends `expired`, uncalled
#      or {'expiring', deadline}: it has, but ARGV[4] was '': call again with the expiry's event and error
# One read and one write of the record: every command here counts against the Redis budget per job. The job
# keeps its place in its partition of the index of unfinished jobs: the sweeper reads the lease when the entry comes
# due. A number
# the record holds is read as 0 when it is not one: an error here would hand the message back on every try.
CLAIM = """
TERMINAL_TABLE
local f = redis.call('HMGET', KEYS[1], 'status', 'lease_until', 'attempt_count', 'callback_status', 'started_at',
  'key_token', 'request', 'environment', 'max_attempts', 'model', 'app_id', 'watched', 'stream',
  'attempt_started_at', 'deadline', 'quota_set', 'relay')
local status = f[1]
if not status then return {'missing'} end
if terminal[status] then
  return {'finished', status, f[4] or ''}
end
local now = tonumber(ARGV[1])
if status == 'running' and (tonumber(f[2]) or 0) > now then return {'leased', f[2]} end
local followed = f[12] or f[13] == '1'
local deadline = tonumber(f[15] or '')
local expired = deadline and deadline <= now
-- The expiry's event and error come with a second call, made only for an expired job.
if expired and ARGV[4] == '' then return {'expiring', f[15]} end
local n = (tonumber(f[3]) or 0) + 1
local lost
if status == 'running' then
  -- The previous holder vanished mid-call (worker lost): its attempt counts, and says so.
  lost = '{"n":' .. (n - 1) .. (f[14] and (',"started_at":' .. f[14]) or '') ..
    ',"outcome":"worker_lost","error_type":"worker_lost",' ..
    '"message":"the worker holding this attempt stopped before it finished","finished_at":' .. ARGV[1] .. '}'
  local prev = redis.call('HGET', KEYS[1], 'attempts')
  lost = prev and (prev .. '\\n' .. lost) or lost
end
if expired then
  -- Past its deadline: never called from here on.
  local ended = {'status', 'expired', 'updated_at', ARGV[1], 'finished_at', ARGV[1], 'error', ARGV[5]}
  if lost then
    table.insert(ended, 'attempts')
    table.insert(ended, lost)
  end
  redis.call('HSET', KEYS[1], unpack(ended))
  redis.call('HDEL', KEYS[1], 'next_attempt_at')
  redis.call('ZREM', KEYS[3], ARGV[3])
  if f[16] then redis.call('ZREM', f[16], ARGV[3]) end  -- its partition of the index (llmq.worker.jobs.unfinished)
  if followed then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e', ARGV[4])
    redis.call('EXPIRE', KEYS[2], ARGV[6])
  end
  return {'expired', f[4] or ''}
end
local changes = {'status', 'running', 'attempt_count', n, 'lease_until', ARGV[2], 'updated_at', ARGV[1],
  'attempt_started_at', ARGV[1]}
if not f[5] then
  table.insert(changes, 'started_at')
  table.insert(changes, ARGV[1])
end
if lost then
  table.insert(changes, 'attempts')
  table.insert(changes, lost)
end
redis.call('HSET', KEYS[1], unpack(changes))
if followed then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', EVENTS_MAXLEN, '*', 'e',
    '{"type":"state","status":"running","attempt":' .. n .. ',"at":' .. ARGV[1] .. '}')
end
return {'claimed', n, f[6], f[7], f[8], f[9], f[10], f[4] or '', f[11] or '', f[13] or '', f[15] or '',
  f[17] or ''}
"""

# KEYS: job, events, deadlines
# ARGV: to_status, allowed_from (',a,b,'), now, event_json, attempt_json ('' for none),
#       terminal ('1'|'0'), job_id, ttl_s, field, value, ...
# A finished job leaves its partition of the index of unfinished jobs, its app's quota (named in its record:
# `quota_set`); a job that goes on is looked at again by the sweeper from now (its entry is only moved: `XX`).
# A followed job's event stream gets the record's TTL here: the stream is born with the watch, a claim or a
# cancel, and every job ends with this script (the sweeper fails those that never move).
# Cancelling a running job announces it on the cancel channel: the worker holding its call aborts it.
# Returns {'ok', to_status} or {'refused', current_status} or {'missing'}
TRANSITION = """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempts', 'next_attempt_at', 'watched', 'stream', 'deadline',
  'quota_set')
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
  if f[6] then redis.call('ZREM', KEYS[3], ARGV[7]) end
  if f[7] then redis.call('ZREM', f[7], ARGV[7]) end
  if ARGV[1] == 'cancelled' and status == 'running' then redis.call('PUBLISH', 'CANCELS_CHANNEL', ARGV[7]) end
elseif f[7] then
  redis.call('ZADD', f[7], 'XX', ARGV[3], ARGV[7])
end
return {'ok', ARGV[1]}
"""

# KEYS: job, events
# ARGV: owner ids (the caller's under each configured server secret)
# The record (flat field/value list) and the id of the stream's last event ('0-0' for none), read together. An
# unfinished job of one of these owners that nobody followed yet is marked `watched` with how far its record tells its
# events: 'R,C', its R attempt records and its attempt count C. From here on every event goes to the stream.
# A stream begun without a mark (a streaming request) holds everything after `queued`: its point is '0,0'.
WATCH = """
local f = redis.call('HGETALL', KEYS[1])
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local last_id = last[1] and last[1][1] or '0-0'
local h = {}
for i = 1, #f, 2 do h[f[i]] = f[i + 1] end
local open = h.status == 'queued' or h.status == 'running' or h.status == 'retrying'
local mine = false
for i = 1, #ARGV do if h.owner == ARGV[i] then mine = true end end
if open and mine and not h.watched and h.stream ~= '1' then
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
TERMINAL_TABLE
local f = redis.call('HMGET', KEYS[1], 'status', 'callback_status', 'callback_lease_until', 'callback_next_at',
  'callback_attempts')
local status, cs = f[1], f[2] or ''
if not terminal[status] then return {'none', cs} end
local now = tonumber(ARGV[1])
local open = cs == 'pending' or cs == 'retrying' or (cs == 'delivering' and (tonumber(f[3]) or 0) < now)
if not open then return {'none', cs} end
if (tonumber(f[4]) or 0) > now then return {'not_due', f[4]} end
redis.call('HSET', KEYS[1], 'callback_status', 'delivering', 'callback_lease_until', ARGV[2])
return {'claimed', f[5] or '0'}
"""

# KEYS: job
# ARGV: attempt number, attempt_json
# The attempt of a call that was in flight when its job was cancelled: kept with the job, since the proxy was
# called, but only while the job is cancelled and that attempt is still its last one.
# Returns 1 if recorded, 0 otherwise.
RECORD_CANCELLED_ATTEMPT = """
local f = redis.call('HMGET', KEYS[1], 'status', 'attempt_count', 'attempts')
if f[1] ~= 'cancelled' or f[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'attempts', f[3] and (f[3] .. '\\n' .. ARGV[2]) or ARGV[2])
return 1
"""

# KEYS: the records of the jobs a worker is calling for
# ARGV: lease_until, then each job's attempt number
# A live worker keeps the leases of its long calls: a job whose lease lapses is taken back (`llmq.worker.sweeper`).
# Only the attempt the worker holds is renewed; a job another worker has taken over since is left alone.
RENEW_LEASES = """
local renewed = 0
for i = 1, #KEYS do
  local f = redis.call('HMGET', KEYS[i], 'status', 'attempt_count')
  if f[1] == 'running' and f[2] == ARGV[i + 1] then
    redis.call('HSET', KEYS[i], 'lease_until', ARGV[1])
    renewed = renewed + 1
  end
end
return renewed
"""

# The stream's length bound lives in llmq.worker.redis_keys with the key names, the terminal statuses with the record.
SUBMIT, CLAIM, TRANSITION, CLAIM_DELIVERY = (
    script.replace("EVENTS_MAXLEN", str(EVENTS_MAXLEN)).replace("TERMINAL_TABLE", _TERMINAL_TABLE)
    .replace("CANCELS_CHANNEL", CANCELS_CHANNEL).replace("FAIR_READY_PREFIX", redis_keys.FAIR_READY_PREFIX)
    for script in (SUBMIT, CLAIM, TRANSITION, CLAIM_DELIVERY)
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
    return ScriptCall([redis_keys.job(job_id), redis_keys.job_events(job_id), redis_keys.DEADLINES], args)


def update_callback_call(
    job_id: str, allowed: Iterable[str], delivery_json: str = "", fields: dict[str, str] | None = None
) -> ScriptCall:
    """UPDATE_CALLBACK: change the callback's fields if its status is in `allowed`, appending `delivery_json`."""
    args: list[str | int] = [status_set(allowed), delivery_json]
    if fields:
        for pair in fields.items():
            args += pair
    return ScriptCall([redis_keys.job(job_id)], args)
