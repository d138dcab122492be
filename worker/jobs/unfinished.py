"""The index of unfinished jobs, partitioned by app id: one sorted set per app id, which is also its quota.

Every unfinished job (a single POST's, a batch's, a batch line's) is a member of exactly one partition: its app
id's, `llmq:quota:app:<app id>`, once the app id is known, else the one shared by app ids not known yet,
`llmq:quota:unknown`. The job's record names it (`quota_set`). The submit script counts a partition (`ZCARD`) for
the quota and adds to it; the last transition of a job removes it (`llmq.worker.jobs.scripts`); the sweeper walks
the partitions for jobs nothing moves on (`llmq.worker.sweeper`). One entry per job where there were two (an
index of all unfinished jobs beside the quota sets): a `ZADD` and a `ZREM` fewer per job.

Scores. A job enters scored by its submission time; from then on its score says when the sweeper should look at it
again: the sweeper moves an entry that is not due yet to when it could be, a retry and a job that flow control
holds back move theirs to their own time. Every one of those times is at or after the job's submission (a lease
ends after its claim, a retry's due time is after its failure), so an entry scored before a record's TTL ago
belongs to a record submitted before that, which has expired: the submit script's self-healing
(`ZREMRANGEBYSCORE` of such entries when a partition is full) never takes a live job's place.

Partitions in use are listed in `llmq:jobs:partitions`, scored by when one was last marked in use. The submit
script marks the partition it adds to, unless the API process marked it itself less than `MARK_TRUSTED_S` ago (it
says so with a flag, as for the other look-ups it skips): once a minute per app id and API process, however many
jobs, and a feed marks the partition it adds to. The sweeper drops a partition from the list only when it is empty
and was marked more than `MARK_KEPT_S` ago, in one script, so it never drops one that a submission is about to
fill on the strength of a recent mark (the margin covers clocks apart by minutes). A partition that holds jobs is
therefore listed, whatever it held before (a previous version's quota set, entries of records gone).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis

from llmq.worker import redis_keys
from llmq.worker.secrets.platform_key import app_id_of

if TYPE_CHECKING:
    from llmq.worker.settings import Settings

# An API process leaves out the mark of a partition it marked less than this ago; the sweeper keeps an empty
# partition listed until its last mark is this much older.
MARK_TRUSTED_S = 60.0
MARK_KEPT_S = 5 * MARK_TRUSTED_S
# Partitions one sweep looks at, at most: the walk resumes where it stopped at the next sweep.
PARTITIONS_PER_SWEEP = 1000
# Entries of the previous version's single index one sweep moves, at most (README, Upgrading).
ADOPT_PER_SWEEP = 2000


@dataclass(frozen=True)
class Quota:
    """The partition an app id's new jobs go to, how many unfinished jobs it may hold, and how many it holds."""

    partition: str
    limit: int
    held: int

    @property
    def room(self) -> int:
        return self.limit - self.held

    @property
    def shared(self) -> bool:
        """The partition of app ids not known yet."""
        return self.partition == redis_keys.UNKNOWN_APPS_UNFINISHED


def read_quota(pipe: Any, app_id: str) -> None:
    """Queue on `pipe` (redis-py's, synchronous or asyncio) what `quota_from` needs: whether the proxy has accepted
    the app id, and the size of its partition and of the shared one."""
    pipe.sismember(redis_keys.KNOWN_APPS, redis_keys.name_part(app_id))
    pipe.zcard(redis_keys.app_unfinished(app_id))
    pipe.zcard(redis_keys.UNKNOWN_APPS_UNFINISHED)


def quota_from(app_id: str, trusted: bool, replies: Sequence[Any], app_max: int, unknown_max: int) -> Quota:
    """As the submit script chooses: the app id's own partition once it is known (`trusted`, or found known by
    `read_quota`'s replies, the last three of the pipeline), else the shared one."""
    found, own, shared = replies[-3:]
    if trusted or found:
        return Quota(redis_keys.app_unfinished(app_id), app_max, int(own))
    return Quota(redis_keys.UNKNOWN_APPS_UNFINISHED, unknown_max, int(shared))


def trusted_app_ids(settings: Settings) -> frozenset[str]:
    """App ids known without asking the proxy: the service's own key's."""
    return frozenset({app_id_of(settings.service_key)} if settings.service_key else ())


# KEYS: partitions in use, the partition
# ARGV: marked before (epoch seconds)
# Drops a partition from the list when it holds no job and its last mark is older than ARGV[1].
# Returns 1 if dropped.
DROP_IF_EMPTY = """
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
local marked = tonumber(redis.call('ZSCORE', KEYS[1], KEYS[2]) or '0')
if marked >= tonumber(ARGV[1]) then return 0 end
return redis.call('ZREM', KEYS[1], KEYS[2])
"""

# KEYS: the previous version's index, partitions in use
# ARGV: now, then per entry: job id, its score there, the partition for a record that names none
# Moves entries of the previous version's index into their jobs' partitions (the one the record names; a batch line
# of that version names none and is given the one passed), or drops them if the job is finished or gone. Job keys
# are built here from the ids (a Redis cluster would need them as KEYS). Returns the number of entries moved.
ADOPT = """
local moved = 0
for i = 2, #ARGV, 3 do
  local id, job = ARGV[i], JOB_KEY_PREFIX .. ARGV[i]
  local f = redis.call('HMGET', job, 'status', 'quota_set')
  if f[1] == 'queued' or f[1] == 'running' or f[1] == 'retrying' then
    local partition = f[2]
    if not partition then
      partition = ARGV[i + 2]
      redis.call('HSET', job, 'quota_set', partition)
    end
    redis.call('ZADD', partition, ARGV[i + 1], id)
    redis.call('ZADD', KEYS[2], 'GT', ARGV[1], partition)
    moved = moved + 1
  end
  redis.call('ZREM', KEYS[1], id)
end
return moved
""".replace("JOB_KEY_PREFIX", repr(redis_keys.job("")))


def partitions_to_sweep(client: redis.Redis, limit: int = PARTITIONS_PER_SWEEP) -> list[str]:
    """The partitions in use, about `limit` at most, from where the previous walk stopped (a cursor kept in Redis);
    a walk that comes round to the start stops there."""
    start = cursor = int(cast(str | None, client.get(redis_keys.UNFINISHED_SWEEP_CURSOR)) or 0)
    found: dict[str, None] = {}  # in order, once each (a scan may return a member twice)
    while len(found) < limit:
        cursor, page = client.zscan(redis_keys.UNFINISHED_PARTITIONS, cursor, count=min(100, limit - len(found)))
        found.update((str(partition), None) for partition, _ in page)
        if cursor == 0:
            break
    if cursor != start:
        client.set(redis_keys.UNFINISHED_SWEEP_CURSOR, cursor)
    return list(found)


def drop_if_empty(client: redis.Redis, partition: str, now: float) -> bool:
    """Drop `partition` from the list if it holds no job and was not marked lately; True if dropped."""
    return bool(client.eval(DROP_IF_EMPTY, 2, redis_keys.UNFINISHED_PARTITIONS, partition, repr(now - MARK_KEPT_S)))


def adopt_legacy(client: redis.Redis, now: float, limit: int = ADOPT_PER_SWEEP) -> int:
    """Move up to `limit` entries of the previous version's single index into their partitions (or drop those of
    jobs finished or gone); how many were looked at."""
    entries = cast(list[tuple[str, float]], client.zrange(redis_keys.LEGACY_ACTIVE_JOBS, 0, limit - 1,
                                                          withscores=True))
    if not entries:
        return 0
    pipe = client.pipeline(transaction=False)
    for job_id, _ in entries:
        pipe.hget(redis_keys.job(job_id), "app_id")
    apps = cast(list[str | None], pipe.execute())
    pipe = client.pipeline(transaction=False)
    for app_id in apps:
        pipe.sismember(redis_keys.KNOWN_APPS, redis_keys.name_part(app_id or ""))
    known = cast(list[int], pipe.execute())
    args: list[str] = [repr(now)]
    for (job_id, score), app_id, is_known in zip(entries, apps, known, strict=True):
        args += [job_id, repr(score),
                 redis_keys.app_unfinished(app_id or "") if is_known else redis_keys.UNKNOWN_APPS_UNFINISHED]
    client.eval(ADOPT, 2, redis_keys.LEGACY_ACTIVE_JOBS, redis_keys.UNFINISHED_PARTITIONS, *args)
    return len(entries)


def counted_sets(listed: list[str]) -> list[str]:
    """The sorted sets whose sizes add up to the unfinished jobs, given the partitions listed in use: those, and
    what the previous version's index still holds."""
    return [*listed, redis_keys.LEGACY_ACTIVE_JOBS]


def count(client: redis.Redis) -> int:
    """Unfinished jobs in all."""
    pipe = client.pipeline(transaction=False)
    for key in counted_sets(cast(list[str], client.zrange(redis_keys.UNFINISHED_PARTITIONS, 0, -1))):
        pipe.zcard(key)
    return sum(cast(list[int], pipe.execute()))
