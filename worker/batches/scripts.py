"""Lua scripts that change a batch atomically with its lines' jobs.

The status check and the change it guards happen in one script, so a cancel (or the window's end) recorded
before a feed means the feed queues nothing, and one recorded after it finds every fed job in `inflight`.
"""

from __future__ import annotations

from llmq.worker import redis_keys

# KEYS: batch, inflight, partitions in use, the app's partition of the index of unfinished jobs (its quota),
#       deadlines, fair apps, doorbell, then per job: job, queue ('' to publish separately)
# ARGV: expected next_line, ttl_s, the partition's limit, deadline (the window's end), the app id's name in the fair
#       turns ('' without them: the queues are broker queues),
#       then per job: pair_count, now, job_id, line, next_line and next_offset after it, message, field, value…
# Records the jobs of the next lines and moves the checkpoint, only if the batch is still running undisturbed
# and nobody fed these lines already; no more of them than the app's quota has room for (the checkpoint then
# moves to the last line recorded: the others are fed later). The partition is marked in use (the sweeper walks it).
# Every job is due at the window's end (the deadline check ends it there, `expired`, if it is still waiting).
# With fair turns the queues are the app id's ready lists, and an app id whose lists were empty enters the fair
# apps set and rings the doorbell, as in the submit script (`llmq.worker.jobs.scripts.SUBMIT`): a batch's lines
# take turns with other app ids' jobs.
# Returns the number of jobs recorded (0: refused, or no room).
FEED = """
local b = redis.call('HMGET', KEYS[1], 'status', 'ending', 'next_line')
if b[1] ~= 'in_progress' or (b[2] and b[2] ~= '') or (b[3] or '0') ~= ARGV[1] then return 0 end
local partition, ttl, limit, deadline = KEYS[4], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local held = redis.call('ZCARD', partition)
local a, n, next_line, next_offset, first_now = 6, 0, nil, nil, nil
for k = 8, #KEYS, 2 do
  if held + n >= limit then break end
  local pairs_end = a + 6 + 2 * tonumber(ARGV[a])
  local now, id, line, message = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 6]
  redis.call('HSET', KEYS[k], 'quota_set', partition, unpack(ARGV, a + 7, pairs_end))
  redis.call('EXPIRE', KEYS[k], ttl)
  redis.call('ZADD', partition, now, id)
  redis.call('ZADD', KEYS[5], deadline, id)
  if KEYS[k + 1] ~= '' then redis.call('LPUSH', KEYS[k + 1], message) end
  redis.call('HSET', KEYS[2], id, line)
  next_line, next_offset, first_now = ARGV[a + 4], ARGV[a + 5], first_now or now
  n = n + 1
  a = pairs_end + 1
end
if n == 0 then return 0 end
redis.call('ZADD', KEYS[3], 'GT', first_now, partition)
redis.call('HSET', KEYS[1], 'next_line', next_line, 'next_offset', next_offset)
redis.call('HINCRBY', KEYS[1], 'fed', n)
if ARGV[5] ~= '' and redis.call('ZADD', KEYS[6], 'NX', 0, ARGV[5]) == 1 then
  local bells = {}
  for i = 1, math.min(n, 16) do bells[i] = '1' end
  redis.call('LPUSH', KEYS[7], unpack(bells))
end
return n
"""

# KEYS: batch, inflight, deadlines
# ARGV: now, ending (cancelled | expired), status to move to ('cancelling' | ''), timestamp field
# Stops the batch: no feed passes after this. Lines still queued or waiting for a retry are cancelled here,
# in the same step, so no new proxy call starts for them; lines whose call is under way are cancelled by the
# caller next (their result is dropped). Returns the status before, or false if the batch had already ended.
STOP = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'validating' and status ~= 'in_progress' then return false end
local ending = redis.call('HGET', KEYS[1], 'ending')
if ending and ending ~= '' then return status end
local changes = {'ending', ARGV[2], ARGV[4], ARGV[1]}
if ARGV[3] ~= '' then
  table.insert(changes, 'status')
  table.insert(changes, ARGV[3])
end
redis.call('HSET', KEYS[1], unpack(changes))
local inflight = redis.call('HKEYS', KEYS[2])
for _, id in ipairs(inflight) do
  local job = JOB_KEY_PREFIX .. id
  local s = redis.call('HMGET', job, 'status', 'quota_set')
  if s[1] == 'queued' or s[1] == 'retrying' then
    redis.call('HSET', job, 'status', 'cancelled', 'updated_at', ARGV[1], 'finished_at', ARGV[1])
    redis.call('HDEL', job, 'next_attempt_at')
    redis.call('ZREM', KEYS[3], id)
    -- A line fed by a version before the partitioned index names no partition: the sweeper drops its entry.
    if s[2] then redis.call('ZREM', s[2], id) end
  end
end
return status
"""

# KEYS: batch
# ARGV: allowed statuses (',a,b,'), field, value, ...
# Returns the status before the change, or false if it was not allowed.
ADVANCE = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status or not string.find(ARGV[1], ',' .. status .. ',', 1, true) then return false end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return status
"""

# Job keys are built in the script from the ids in `inflight`, partitions from the records (a Redis cluster would
# need them as KEYS).
STOP = STOP.replace("JOB_KEY_PREFIX", repr(redis_keys.job("")))


def stop_keys(batch_id: str) -> list[str]:
    """The KEYS of `STOP` for a batch (the API's cancel and the runner's window end both call it)."""
    return [redis_keys.batch(batch_id), redis_keys.batch_inflight(batch_id), redis_keys.DEADLINES]
