"""The API's side of the job records: submit, read, cancel, and wait without polling."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis

from llmq.api.group_commit import GroupCommit
from llmq.worker import redis_keys
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import TERMINAL, UNFINISHED, NewJob, is_terminal_event, state_event

SUBMIT_CHUNK = 100

# What redis-py returns from the stream commands, with decode_responses on.
StreamEntries = list[tuple[str, dict[str, str]]]
StreamReply = list[tuple[str, StreamEntries]]


@dataclass(frozen=True)
class Submission:
    """A job to record; with `queue` and `message`, its broker message is pushed in the same script."""

    job: NewJob
    idempotency_key: str | None = None
    queue: str | None = None
    message: str = ""


class AsyncJobStore:
    def __init__(self, client: aioredis.Redis, blocking_client: aioredis.Redis, ttl_s: int) -> None:
        self.redis = client
        # Blocking reads (long-polling, event streams) get their own pool, with no short socket timeout.
        self.blocking = blocking_client
        self.ttl_s = ttl_s
        self._submit = client.register_script(job_scripts.SUBMIT)
        self._transition = client.register_script(job_scripts.TRANSITION)
        self._update_callback = client.register_script(job_scripts.UPDATE_CALLBACK)
        self._watch = client.register_script(job_scripts.WATCH)
        # Single submissions arriving together share a round trip (see api.group_commit).
        self.submit_one: GroupCommit[Submission, str] = GroupCommit(self.submit_many, max_items=1000)

    async def submit_many(self, submissions: list[Submission]) -> list[str]:
        """Record jobs (and push their messages, when given) in one round trip.

        Returns the id that answers for each: its own, or on an idempotent replay the earlier job's.
        Chunks of `SUBMIT_CHUNK` jobs go to one script call each: one reply to read per chunk rather than
        per job, while Redis still serves other clients between chunks."""
        calls = [self._submit_call(submissions[i:i + SUBMIT_CHUNK]) for i in range(0, len(submissions), SUBMIT_CHUNK)]
        if len(calls) == 1:
            # A pipeline asks SCRIPT EXISTS before every run; a lone call saves that round trip.
            return cast(list[str], await self._submit(**calls[0]))
        pipe = self.redis.pipeline(transaction=False)
        for call in calls:
            await self._submit(**call, client=pipe)
        return [job_id for chunk in await pipe.execute() for job_id in chunk]

    def _submit_call(self, submissions: list[Submission]) -> dict[str, Any]:
        keys_: list[str] = []
        args: list[str | int] = [self.ttl_s]
        for submission in submissions:
            job = submission.job
            idem = redis_keys.idempotency(job.owner, submission.idempotency_key) if submission.idempotency_key else ""
            fields = job.fields
            keys_ += [redis_keys.job(job.id), idem, submission.queue or ""]
            args += [len(fields), repr(job.created_at), job.id, submission.message]
            for pair in fields.items():
                args += pair
        keys_.append(redis_keys.ACTIVE_JOBS)
        return {"keys": keys_, "args": args}

    async def forget(self, submissions: list[Submission]) -> None:
        """Undo submissions whose messages could not be published."""
        pipe = self.redis.pipeline(transaction=True)
        for submission in submissions:
            job = submission.job
            pipe.delete(redis_keys.job(job.id))
            pipe.zrem(redis_keys.ACTIVE_JOBS, job.id)
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
        reply = await self._transition(
            keys=[redis_keys.job(job_id), redis_keys.job_events(job_id), redis_keys.ACTIVE_JOBS],
            args=["cancelled", "," + ",".join(UNFINISHED) + ",", repr(now), state_event("cancelled", now),
                  "", "1", job_id, self.ttl_s],
        )
        return reply[0] == "ok", reply[1] if len(reply) > 1 else "missing"

    async def reopen_callback(self, job_id: str) -> bool:
        """A failed (or gone) delivery starts over from its first attempt."""
        previous = await self._update_callback(
            keys=[redis_keys.job(job_id)],
            args=[",failed,gone,", "", "callback_status", "pending", "callback_attempts", "0", "callback_next_at", "0",
                  "callback_lease_until", "0"],
        )
        return bool(previous)

    async def watch(self, job_id: str, owner: str) -> tuple[dict[str, str], str]:
        """The record and the id of its stream's last event, read together so no change slips between them.

        An unfinished job of `owner` is followed from here on: its workers write every event to the stream."""
        flat, last_id = await self._watch(keys=[redis_keys.job(job_id), redis_keys.job_events(job_id)], args=[owner])
        return dict(zip(flat[::2], flat[1::2], strict=True)), last_id

    async def wait_until_finished(
        self, job_id: str, timeout_s: float, fields: dict[str, str], last_id: str
    ) -> dict[str, str]:
        """The record once the job is finished, or when `timeout_s` runs out (blocking reads, no polling).

        `fields` and `last_id` come from one `watch`: events after `last_id` are the changes since."""
        deadline = time.monotonic() + timeout_s
        while fields and fields.get("status") not in TERMINAL:
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            events = await self.read_events(job_id, last_id, remaining_ms)
            if not events:
                break
            if any(is_terminal_event(event) for _, event in events):
                return await self.fields(job_id)
            last_id = events[-1][0]
        return fields

    async def read_events(
        self, job_id: str, after_id: str, block_ms: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after `after_id`, waiting up to `block_ms` for the first one."""
        reply = cast(
            StreamReply, await self.blocking.xread({redis_keys.job_events(job_id): after_id}, block=block_ms, count=500)
        )
        return [(event_id, json.loads(entry["e"])) for event_id, entry in reply[0][1]] if reply else []

    async def history(self, job_id: str, after_id: str = "-") -> list[tuple[str, dict[str, Any]]]:
        start = after_id if after_id == "-" else f"({after_id}"
        entries = cast(StreamEntries, await self.redis.xrange(redis_keys.job_events(job_id), min=start, max="+"))
        return [(event_id, json.loads(entry["e"])) for event_id, entry in entries]

