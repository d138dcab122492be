"""The API's side of the job records: submit, read, cancel, and wait without polling (`llmq.api.stream_reader`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from llmq.api.group_commit import GroupCommit
from llmq.api.memory_guard import MemoryGuard
from llmq.api.stream_reader import Subscription
from llmq.worker import redis_keys
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import TERMINAL, UNFINISHED, NewJob, is_terminal_event, read_json, state_event
from llmq.worker.jobs.unfinished import MARK_TRUSTED_S, quota_from, read_quota

# What redis-py returns from the stream commands, with decode_responses on.
StreamEntries = list[tuple[str, dict[str, str]]]

# A key the proxy rejects is refused at submission at most this long after a worker recorded it: a caller's
# submissions within it skip that look-up. App ids found known are not looked up again (an app id stays known).
REJECTED_RECHECK_S = 1.0
CALLER_CACHE_SIZE = 10_000
# An owner's index of jobs (the listing's) is trimmed by a submission at most this often per API process; the index
# key lives this much longer than a record, so it never expires before the newest job it lists.
OWNER_INDEX_TRIM_S = 60.0


@dataclass(frozen=True)
class Submission:
    """A job to record; with `queue` and `message`, its broker message is pushed in the same script."""

    job: NewJob
    idempotency_key: str | None = None
    queue: str | None = None
    message: str = ""


@dataclass(frozen=True)
class Quotas:
    """Unfinished jobs allowed per known app id, and in all for the app ids not known yet."""

    app_max: int
    unknown_apps_max: int
    trusted_app_ids: frozenset[str] = frozenset()  # known without asking the proxy (the service's own key)


@dataclass(frozen=True)
class JobPage:
    """One page of an owner's jobs, newest first: records (with their `id`), and where the next page starts."""

    records: list[dict[str, str]]
    has_more: bool
    next_after: str | None  # the last job this page looked at: pass it as `after` for the next page


class UnknownCursor(Exception):
    """`after` names no job in the caller's listing (unknown, older than a record's TTL, or another key's)."""


# A listing reads at most this many entries of the owner's index (and their records): a status filter that matches
# few jobs answers a short page with `has_more` and a cursor rather than reading on.
LIST_SCAN_MAX = 1000
LIST_READ_CHUNK = 100
# The fields a listing shows (a job's result, attempts and deliveries are read with GET /v1/jobs/{id}).
LISTED_FIELDS = ("owner", "status", "model", "environment", "priority", "max_attempts", "stream", "created_at",
                 "updated_at", "started_at", "finished_at", "next_attempt_at", "deadline", "metadata", "error",
                 "callback", "callback_status")


@dataclass(frozen=True)
class Refusal:
    """Why the submit script recorded none of a caller's jobs: its quota is used up, or the proxy rejected its key."""

    reason: str  # rejected_key | app_quota | unknown_app_quota
    retry_after_s: int = 0


def _refusal(reply: str) -> Refusal:
    reason, _, ms_left = reply[1:].partition(":")
    return Refusal(reason, max(1, -(-int(ms_left) // 1000)) if ms_left else 0)


class AsyncJobStore:
    def __init__(
        self, client: aioredis.Redis, ttl_s: int, quotas: Quotas, memory: MemoryGuard,
        fair_direct_jobs: int | None = None,
    ) -> None:
        self.redis = client
        # With fair turns: how many unfinished jobs an app id may have before new ones wait in its ready lists.
        self.fair_direct_jobs = fair_direct_jobs
        self.memory = memory  # checked by the submission (api.submission) before the script runs
        self.ttl_s = ttl_s
        self.quotas = quotas
        self._submit = client.register_script(job_scripts.SUBMIT)
        self._transition = client.register_script(job_scripts.TRANSITION)
        self._update_callback = client.register_script(job_scripts.UPDATE_CALLBACK)
        self._watch = client.register_script(job_scripts.WATCH)
        # What the submit script told lately, so that it need not look again (bounded: cleared when full):
        self._known_apps: set[str] = set()  # app ids the proxy accepted (an app id stays known)
        self._not_rejected_at: dict[str, float] = {}  # owner -> when its key was last found not rejected
        self._index_trimmed_at: dict[str, float] = {}  # owner -> when a submission last trimmed its index
        self._marked_at: dict[str, float] = {}  # partition -> when a submission last marked it in use
        # Single submissions arriving together share a round trip (see api.group_commit).
        self.submit_one: GroupCommit[Submission, str | Refusal] = GroupCommit(self.submit_many, max_items=1000)

    async def submit_many(self, submissions: list[Submission]) -> list[str | Refusal]:
        """Record jobs (and push their messages, when given) in one script call: all of them, or none.

        Returns for each the id that answers for it (its own, or on an idempotent replay the earlier job's), or
        the refusal of its caller, whose other jobs in the call are refused with it. A call holds at most a
        batch or a group of single POSTs (1,000 jobs), which holds Redis for some 25-35 ms (docs/capacity.md)."""
        call, owners, apps = self._submit_call(submissions)
        replies = await self._submit(**call)
        answers: list[str | Refusal] = [_refusal(reply) if reply.startswith("!") else reply for reply in replies[:-2]]
        self._remember(owners, apps, replies[-2], replies[-1], answers, submissions)
        return answers

    def _remember(
        self, owners: list[str], apps: list[str], known: str, marked: str, answers: list[str | Refusal],
        submissions: list[Submission],
    ) -> None:
        for cache in (self._known_apps, self._not_rejected_at, self._index_trimmed_at, self._marked_at):
            if len(cache) >= CALLER_CACHE_SIZE:
                cache.clear()
        self._known_apps.update(app for app, flag in zip(apps, known, strict=True) if flag == "k")
        rejected = {s.job.owner for s, a in zip(submissions, answers, strict=True)
                    if isinstance(a, Refusal) and a.reason == "rejected_key"}
        now = time.monotonic()
        for app, is_known, is_marked in zip(apps, known, marked, strict=True):
            if is_marked == "m":
                partition = redis_keys.app_unfinished(app) if is_known == "k" else redis_keys.UNKNOWN_APPS_UNFINISHED
                self._marked_at[partition] = now
        for owner in owners:
            if owner not in rejected:
                self._not_rejected_at.setdefault(owner, now)
        # The script trims an owner's index only where it added to it: where a job of the owner was recorded.
        for submission, answer in zip(submissions, answers, strict=True):
            if answer == submission.job.id:
                self._index_trimmed_at.setdefault(submission.job.owner, now)

    def _submit_call(self, submissions: list[Submission]) -> tuple[dict[str, Any], list[str], list[str]]:
        """The script's keys and arguments; the callers' owners and app ids, in the script's order."""
        callers: dict[str, int] = {}  # owner -> its index in the script, from 1
        apps: list[str] = []
        now = time.monotonic()
        caller_keys: list[str] = []
        caller_args: list[str | int] = []
        job_keys: list[str] = []
        job_args: list[str | int] = []
        for submission in submissions:
            job = submission.job
            caller = callers.get(job.owner)
            if caller is None:
                caller = callers[job.owner] = len(callers) + 1
                caller_keys += [redis_keys.rejected_key(job.owner), redis_keys.app_unfinished(job.app_id),
                                redis_keys.owner_jobs(job.owner)]
                apps.append(job.app_id)
                known = job.app_id in self.quotas.trusted_app_ids or job.app_id in self._known_apps
                checked_at = self._not_rejected_at.get(job.owner)
                if checked_at is not None and now - checked_at >= REJECTED_RECHECK_S:
                    del self._not_rejected_at[job.owner]
                    checked_at = None
                trimmed_at = self._index_trimmed_at.get(job.owner)
                if trimmed_at is not None and now - trimmed_at >= OWNER_INDEX_TRIM_S:
                    del self._index_trimmed_at[job.owner]
                    trimmed_at = None
                caller_args += [redis_keys.name_part(job.app_id),
                                ("k" if known else "") + ("" if checked_at else "r") + ("" if trimmed_at else "t")
                                + ("p" if self._marked_lately(redis_keys.app_unfinished(job.app_id), now) else "")
                                + ("u" if self._marked_lately(redis_keys.UNKNOWN_APPS_UNFINISHED, now) else "")]
            idem = redis_keys.idempotency(job.owner, submission.idempotency_key) if submission.idempotency_key else ""
            fields = job.fields
            job_keys += [redis_keys.job(job.id), idem, submission.queue or ""]
            job_args += [caller, len(fields), repr(job.created_at), job.id, submission.message,
                         repr(job.deadline) if job.deadline is not None else ""]
            for pair in fields.items():
                job_args += pair
        keys_ = [redis_keys.UNFINISHED_PARTITIONS, redis_keys.KNOWN_APPS, redis_keys.UNKNOWN_APPS_UNFINISHED,
                 redis_keys.DEADLINES, redis_keys.FAIR_APPS, redis_keys.FAIR_DOORBELL, *caller_keys, *job_keys]
        args = [self.ttl_s, repr(time.time() - self.ttl_s), self.quotas.app_max, self.quotas.unknown_apps_max,
                len(callers), self.ttl_s + 2 * int(OWNER_INDEX_TRIM_S),
                "" if self.fair_direct_jobs is None else self.fair_direct_jobs, *caller_args, *job_args]
        return {"keys": keys_, "args": args}, list(callers), apps

    def _marked_lately(self, partition: str, now: float) -> bool:
        """This process marked the partition in use lately: the sweeper keeps it listed (worker.jobs.unfinished)."""
        marked_at = self._marked_at.get(partition)
        return marked_at is not None and now - marked_at < MARK_TRUSTED_S

    async def quota_full(self, app_id: str) -> Refusal | None:
        """The refusal a job of `app_id` would get now for its quota (the partition the submit script would choose
        is at its limit), or None. A read only: what is admitted on its strength can still be refused later."""
        pipe = self.redis.pipeline(transaction=False)
        read_quota(pipe, app_id)
        quota = quota_from(app_id, app_id in self.quotas.trusted_app_ids or app_id in self._known_apps,
                           await pipe.execute(), self.quotas.app_max, self.quotas.unknown_apps_max)
        if quota.room > 0:
            return None
        return Refusal("unknown_app_quota" if quota.shared else "app_quota")

    async def forget(self, submissions: list[Submission]) -> None:
        """Undo submissions whose messages could not be published."""
        pipe = self.redis.pipeline(transaction=True)
        for submission in submissions:
            job = submission.job
            pipe.delete(redis_keys.job(job.id))
            if job.deadline is not None:
                pipe.zrem(redis_keys.DEADLINES, job.id)
            # Its partition of the index of unfinished jobs is one of these two.
            pipe.zrem(redis_keys.app_unfinished(job.app_id), job.id)
            pipe.zrem(redis_keys.UNKNOWN_APPS_UNFINISHED, job.id)
            pipe.zrem(redis_keys.owner_jobs(job.owner), job.id)
            if submission.idempotency_key:
                pipe.delete(redis_keys.idempotency(job.owner, submission.idempotency_key))
        await pipe.execute()

    async def fields(self, job_id: str) -> dict[str, str]:
        return cast(dict[str, str], await self.redis.hgetall(redis_keys.job(job_id)))

    async def some_fields(self, job_id: str, names: tuple[str, ...]) -> dict[str, str]:
        """Only the named fields of the record (those it has): the request, up to megabytes, stays in Redis."""
        values = cast(list[str | None], await self.redis.hmget(redis_keys.job(job_id), list(names)))
        return {name: value for name, value in zip(names, values, strict=True) if value is not None}

    async def cancel(self, job_id: str) -> tuple[bool, str]:
        now = time.time()
        call = job_scripts.transition_call(job_id, "cancelled", UNFINISHED, now, state_event("cancelled", now),
                                           self.ttl_s)
        reply = await self._transition(keys=call.keys, args=call.args)
        return reply[0] == "ok", reply[1] if len(reply) > 1 else "missing"

    async def reopen_callback(self, job_id: str) -> bool:
        """A failed (or gone) delivery starts over from its first attempt."""
        call = job_scripts.update_callback_call(job_id, ("failed", "gone"), fields={
            "callback_status": "pending", "callback_attempts": "0", "callback_next_at": "0",
            "callback_lease_until": "0"})
        previous = await self._update_callback(keys=call.keys, args=call.args)
        return bool(previous)

    async def watch(self, job_id: str, owners: tuple[str, ...]) -> tuple[dict[str, str], str]:
        """The record and the id of its stream's last event, read together so no change slips between them.

        An unfinished job of one of `owners` is followed from here on: its workers write every event to the stream."""
        flat, last_id = await self._watch(keys=[redis_keys.job(job_id), redis_keys.job_events(job_id)],
                                          args=list(owners))
        return dict(zip(flat[::2], flat[1::2], strict=True)), last_id

    async def wait_until_finished(
        self, job_id: str, timeout_s: float, fields: dict[str, str], events: Subscription
    ) -> dict[str, str]:
        """The record once the job is finished, or when `timeout_s` runs out.

        `fields` and the position of `events` come from one `watch`: its events are the changes since."""
        deadline = time.monotonic() + timeout_s
        while fields and fields.get("status") not in TERMINAL:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            news = await events.next(remaining_s)
            if not news:
                break
            if any(is_terminal_event(event) for _, event in news):
                return await self.fields(job_id)
        return fields

    async def list_jobs(
        self, owners: tuple[str, ...], statuses: frozenset[str] | None, after: str | None, limit: int
    ) -> JobPage:
        """The owners' jobs, newest first, after the job `after` (exclusive), with one of `statuses` if given.

        Reads each owner's index (a key's id under the current and the previous server secrets) and at most
        `LIST_SCAN_MAX` entries and records. Raises UnknownCursor if `after` is in none of the indexes."""
        indexes = [redis_keys.owner_jobs(owner) for owner in owners]
        top: tuple[float, str] | None = None
        if after is not None:
            scores = await _pipelined(self.redis, [("zscore", (index, after)) for index in indexes])
            score = next((float(found) for found in scores if found is not None), None)
            if score is None:
                raise UnknownCursor(after)
            top = (score, after)
        window = LIST_SCAN_MAX if statuses else limit + 1
        oldest = time.time() - self.ttl_s  # entries older than a record's TTL list nothing
        ranges = await _pipelined(self.redis, [
            ("zrevrangebyscore", (index, top[0] if top else "+inf", oldest), {"start": 0, "num": window,
                                                                               "withscores": True})
            for index in indexes])
        candidates, complete = _merged(ranges, window, top)
        records: list[dict[str, str]] = []
        looked_at: str | None = None
        for start in range(0, len(candidates), LIST_READ_CHUNK):
            chunk = candidates[start:start + LIST_READ_CHUNK]
            rows = await _pipelined(self.redis, [("hmget", (redis_keys.job(job_id), *LISTED_FIELDS))
                                                 for job_id in chunk])
            for job_id, row in zip(chunk, rows, strict=True):
                fields = {name: value for name, value in zip(LISTED_FIELDS, row, strict=True) if value is not None}
                # The index is the owner's own; the record's owner is checked all the same.
                if fields.get("owner") in owners and (not statuses or fields.get("status") in statuses):
                    if len(records) == limit:
                        return JobPage(records, True, looked_at)
                    records.append({**fields, "id": job_id})
                looked_at = job_id
        # Every candidate was read: more only if the indexes hold entries beyond the ones read.
        return JobPage(records, not complete, None if complete else looked_at)

    async def history(self, job_id: str, after_id: str = "-") -> list[tuple[str, dict[str, Any]]]:
        start = after_id if after_id == "-" else f"({after_id}"
        entries = cast(StreamEntries, await self.redis.xrange(redis_keys.job_events(job_id), min=start, max="+"))
        return _events(entries)


def _events(entries: StreamEntries) -> list[tuple[str, dict[str, Any]]]:
    """Stream entries as events; an entry that is not a JSON object (a damaged stream) is skipped."""
    events = ((event_id, read_json(entry.get("e", ""))) for event_id, entry in entries)
    return [(event_id, event) for event_id, event in events if isinstance(event, dict)]


async def _pipelined(client: aioredis.Redis, calls: list[tuple[Any, ...]]) -> list[Any]:
    """Commands sent together, `(name, args)` or `(name, args, kwargs)`: one round trip."""
    pipe = client.pipeline(transaction=False)
    for name, args, *kwargs in calls:
        getattr(pipe, name)(*args, **(kwargs[0] if kwargs else {}))
    return cast(list[Any], await pipe.execute())


def _merged(
    ranges: list[list[tuple[str, float]]], window: int, top: tuple[float, str] | None
) -> tuple[list[str], bool]:
    """The ids of several indexes' ranges (each newest first, at most `window` long), newest first, strictly after
    `top`; and whether that is everything up to the oldest entry. A range cut at `window` may hide entries newer
    than another range's tail: the merge stops at the newest of the cut ranges' last entries."""
    entries: list[tuple[float, str]] = []
    floor: tuple[float, str] | None = None
    for found in ranges:
        keyed = [(score, job_id) for job_id, score in found]
        if len(found) == window:
            floor = max(floor, keyed[-1]) if floor else keyed[-1]
        entries += keyed
    entries = sorted({e for e in entries if top is None or e < top}, reverse=True)
    if floor is not None:
        entries = [e for e in entries if e >= floor]
    return [job_id for _, job_id in entries][:window], floor is None
