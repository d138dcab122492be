"""A batch's steps on the worker: validate, feed lines as jobs, collect finished lines, finalize the files.

One step at a time per batch (a Redis lock), each bounded by the window and idempotent: everything it needs
is in Redis (the record, the lines in flight) and the file store (the input, the parts). A step that dies
is simply taken again, by the next step of the chain or, when the chain itself is lost, by the sweeper
(`resume_stalled`). See docs/batch.md.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.lock import Lock

from llmq.worker import redis_keys
from llmq.worker.batches import output, scripts
from llmq.worker.batches.record import TERMINAL
from llmq.worker.celery_app import app as celery_app
from llmq.worker.files import records as file_records
from llmq.worker.files.names import new_file_id
from llmq.worker.files.store import FileStore, ObjectNotFound
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs.record import UNFINISHED, NewJob, dumps, new_job_id, state_event
from llmq.worker.jobs.unfinished import Quota, quota_from, read_quota, trusted_app_ids
from llmq.worker.runtime.broker_message import call_proxy_message
from llmq.worker.runtime.event_loop import wait

log = logging.getLogger("llmq.batches")
Publish = Callable[[list[tuple[str, str, str]]], None]
LOCK_RENEWALS = 3  # a step's lock is renewed this many times per `batch_stall_s`
DEFAULT_OUTPUT_EXPIRY_S = 30 * 24 * 3600


@dataclass
class BatchRuntime:
    rt: Runtime
    files: FileStore
    publish: Publish  # (job id, model, queue) triples, when the broker is not the job Redis
    notify: Callable[[str], None] = lambda _: None  # publish the webhook delivery of a finished batch


def step(brt: BatchRuntime, batch_id: str, now: float | None = None) -> bool:
    """Move the batch on as far as it can go now; True while it has more to do (schedule another step)."""
    rt = brt.rt
    # The lock lapses `batch_stall_s` after its holder stops renewing it, however long the step (a finalize streams
    # the whole file twice): a step whose worker was killed holds the batch no longer than the sweeper waits to
    # resume it. Not thread-local: the renewing thread uses it too.
    hold_s = rt.settings.batch_stall_s
    lock = rt.redis.lock(redis_keys.batch_lock(batch_id), timeout=hold_s, blocking=False, thread_local=False)
    if not lock.acquire():
        return False  # another step holds it and keeps the chain going
    try:
        with _renewed(lock, hold_s / LOCK_RENEWALS):
            return _step(brt, batch_id, time.time() if now is None else now)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:  # outlived its timeout: another step may have run; nothing to undo
            log.warning("batch step outlived its lock", extra={"batch_id": batch_id})


@contextmanager
def _renewed(lock: Lock, every_s: float) -> Iterator[None]:
    """Keep the lock for as long as the block runs, renewing it from a thread of its own."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every_s):
            try:
                lock.reacquire()
            except redis.exceptions.LockError:  # lapsed already (Redis was out of reach): the step ends unguarded
                return
            except redis.RedisError as err:
                log.warning("batch lock not renewed: %s", err)

    thread = threading.Thread(target=renew, name="llmq-batch-lock", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _fields(rt: Runtime, batch_id: str) -> dict[str, str]:
    return cast(dict[str, str], rt.redis.hgetall(redis_keys.batch(batch_id)))


def _step(brt: BatchRuntime, batch_id: str, now: float) -> bool:
    rt = brt.rt
    fields = _fields(rt, batch_id)
    if not fields or fields["status"] in TERMINAL:
        _ended(brt, batch_id)  # again, after a crash between the end and its webhook's publication
        return False
    rt.redis.zadd(redis_keys.ACTIVE_BATCHES, {batch_id: now})
    if fields["status"] == "validating":
        if not _validate(brt, fields, now):
            return False
        fields = _fields(rt, batch_id)
    if fields["status"] in ("in_progress", "cancelling") and now >= float(fields["expires_at"]):
        stop(rt, batch_id, "expired", now)
        fields = _fields(rt, batch_id)
    if fields["status"] in ("in_progress", "cancelling"):
        ending = fields.get("ending", "")
        if ending:
            cancel_running(rt, batch_id, now)
        _collect(brt, fields, now)
        if not ending:
            _feed(brt, fields, now)
            fields = _fields(rt, batch_id)
        drained = rt.redis.hlen(redis_keys.batch_inflight(batch_id)) == 0
        all_fed = int(fields.get("fed") or 0) >= int(fields.get("total") or 0)
        if drained and (ending or all_fed):
            _advance(rt, batch_id, ("in_progress", "cancelling"), status="finalizing", finalizing_at=str(int(now)))
            fields = _fields(rt, batch_id)
    if fields["status"] == "finalizing":
        _finalize(brt, fields, now)
        return False
    return True


def _advance(rt: Runtime, batch_id: str, allowed: tuple[str, ...], **changes: str) -> bool:
    args: list[str] = [f",{','.join(allowed)},"]
    for pair in changes.items():
        args += pair
    return bool(rt.redis.eval(scripts.ADVANCE, 1, redis_keys.batch(batch_id), *args))


def stop(rt: Runtime, batch_id: str, ending: str, now: float) -> str | None:
    """Stop feeding the batch (the window ended, or a cancel); its queued lines are cancelled at once."""
    status = "cancelling" if ending == "cancelled" else ""
    stamp = "cancelling_at" if ending == "cancelled" else "expired_at"
    keys = scripts.stop_keys(batch_id)
    before = rt.redis.eval(scripts.STOP, len(keys), *keys, repr(now), ending, status, stamp)
    return cast(str | None, before or None)


def cancel_running(rt: Runtime, batch_id: str, now: float) -> None:
    """Lines whose call is under way when the batch stops: cancelled, so their results are dropped."""
    for job_id in cast(list[str], rt.redis.hkeys(redis_keys.batch_inflight(batch_id))):
        rt.store.transition(job_id, "cancelled", UNFINISHED, state_event("cancelled", now), now=now)


def _ended(brt: BatchRuntime, batch_id: str) -> None:
    """A batch just ended: its webhook goes out (the delivery's claim makes a second publication harmless)."""
    if brt.rt.redis.hget(redis_keys.batch(batch_id), "callback_status") == "pending":
        brt.notify(batch_id)
    brt.rt.redis.zrem(redis_keys.ACTIVE_BATCHES, batch_id)


def _fail(brt: BatchRuntime, batch_id: str, now: float, code: str, message: str) -> None:
    errors = [{"code": code, "line": None, "message": message, "param": None}]
    _advance(brt.rt, batch_id, ("validating", "in_progress", "cancelling", "finalizing"), status="failed",
             failed_at=str(int(now)), errors=json.dumps(errors))
    _ended(brt, batch_id)


def _validate(brt: BatchRuntime, fields: dict[str, str], now: float) -> bool:
    """The upload already checked every line; here the file must still be there, and its problems fail the batch."""
    rt, batch_id = brt.rt, fields["id"]
    problems = json.loads(fields.get("input_problems") or "[]")
    if problems:
        errors = [{"code": p["code"], "line": p["line"], "message": p["message"], "param": None} for p in problems]
        _advance(rt, batch_id, ("validating",), status="failed", failed_at=str(int(now)), errors=json.dumps(errors))
        _ended(brt, batch_id)
        return False
    if wait(brt.files.stat(fields["input_file_id"])) is None:
        _fail(brt, batch_id, now, "input_file_missing", f"The input file {fields['input_file_id']} no longer exists.")
        return False
    return _advance(rt, batch_id, ("validating",), status="in_progress", in_progress_at=str(int(now)))


def _feed(brt: BatchRuntime, fields: dict[str, str], now: float) -> None:
    """Queue the next lines as jobs, up to the window; the checkpoint moves in the same script."""
    rt, batch_id = brt.rt, fields["id"]
    window = rt.settings.batch_window_lines
    free = window - rt.redis.hlen(redis_keys.batch_inflight(batch_id))
    remaining = int(fields.get("total") or 0) - int(fields.get("fed") or 0)
    # In quarters of the window, not line by line: fewer, larger feeds (each one script call).
    if free <= 0 or remaining <= 0 or free < min(remaining, max(1, window // 4)):
        return
    if rt.breaker is not None and rt.breaker.open_for_s(fields["environment"], now) > 0:
        return  # the proxy is down for everyone: new lines would only fail
    quota = _quota(rt, fields["app_id"])
    if quota.room <= 0:
        return  # the app id is at its limit of unfinished jobs: its lines wait for room (docs/batch.md)
    start = int(fields.get("next_line") or 0)
    try:
        lines = wait(_next_lines(brt.files, fields["input_file_id"], start, int(fields.get("next_offset") or 0),
                                 min(free, quota.room)))
    except ObjectNotFound:
        _fail(brt, batch_id, now, "input_file_missing", f"The input file {fields['input_file_id']} no longer exists.")
        return
    if not lines:
        return
    on_redis = rt.settings.effective_broker_url == rt.settings.redis_url
    queue = redis_keys.QUEUE_BY_PRIORITY[fields.get("priority", "low")]  # type: ignore[index]
    # With fair turns every line waits in its app id's ready list: a batch is the flood they exist for.
    fair_app = redis_keys.name_part(fields["app_id"]) if on_redis and rt.settings.fair_turns else ""
    pushed_to = redis_keys.fair_ready(fair_app, queue) if fair_app else queue
    keys = [redis_keys.batch(batch_id), redis_keys.batch_inflight(batch_id), redis_keys.UNFINISHED_PARTITIONS,
            quota.partition, redis_keys.DEADLINES, redis_keys.FAIR_APPS, redis_keys.FAIR_DOORBELL]
    deadline = float(fields["expires_at"])
    args: list[str | int] = [str(start), rt.settings.result_ttl_s, quota.limit, repr(deadline), fair_app]
    jobs: list[NewJob] = []
    for line_no, raw, end_offset in lines:
        data = json.loads(raw)
        body = dict(data["body"])
        body.pop("stream", None)  # a line's answer is one JSON body
        job = NewJob(
            id=new_job_id(), owner=fields["owner"], key_token=fields["key_token"], app_id=fields["app_id"],
            model=body["model"], request_json=dumps(body), environment=fields["environment"],
            priority=fields.get("priority", "low"),  # type: ignore[arg-type]
            max_attempts=int(fields["max_attempts"]), created_at=now, deadline=deadline,
        )
        # The `deadline` holds without the batch's steps: a line still waiting at the window's end ends `expired`
        # by itself (the deadline check, or its next claim), though the step that stops the batch comes later.
        # `retry_until`: a proxy outage does not fail the line; it retries until the window ends (job_runner).
        job_fields = {**job.fields, "batch_id": batch_id, "custom_id": data["custom_id"], "line": str(line_no),
                      "retry_until": fields["expires_at"]}
        message = call_proxy_message(celery_app, job.id, job.model, queue) if on_redis else ""
        keys += [redis_keys.job(job.id), pushed_to if on_redis else ""]
        args += [len(job_fields), repr(now), job.id, str(line_no), str(line_no), str(end_offset), message]
        for pair in job_fields.items():
            args += pair
        jobs.append(job)
    fed = int(rt.redis.eval(scripts.FEED, len(keys), *keys, *args))
    if fed and not on_redis:
        # Recorded first: if publishing fails, the sweeper publishes the queued jobs again.
        brt.publish([(job.id, job.model, queue) for job in jobs[:fed]])


def _quota(rt: Runtime, app_id: str) -> Quota:
    """The partition the app id's lines go to, as for its single jobs, and its room for more unfinished jobs. Read
    before the lines, so an app at its limit reads none; the feed script checks again."""
    settings = rt.settings
    pipe = rt.redis.pipeline(transaction=False)
    read_quota(pipe, app_id)
    return quota_from(app_id, app_id in trusted_app_ids(settings), pipe.execute(), settings.app_max_unfinished,
                      settings.unknown_apps_max_unfinished)


async def _next_lines(
    files: FileStore, name: str, start: int, offset: int, wanted: int
) -> list[tuple[int, bytes, int]]:
    """Up to `wanted` request lines after physical line `start` (which ends at byte `offset`), each with its
    number and the byte after it. The file is read from the checkpoint on."""
    found: list[tuple[int, bytes, int]] = []
    line_no = start
    reader = cast(AsyncGenerator[bytes, None], files.lines(name, start=offset))
    async with aclosing(reader) as lines:  # closes the file when leaving early
        async for raw in lines:
            line_no += 1
            offset += len(raw) + 1  # past a last line without "\n" too: nothing follows it
            if raw.strip():
                found.append((line_no, raw, offset))
                if len(found) == wanted:
                    break
    return found


def _collect(brt: BatchRuntime, fields: dict[str, str], now: float) -> None:
    """Finished lines go to a part in the file store; only once it is committed are they counted and dropped."""
    rt, batch_id = brt.rt, fields["id"]
    inflight = cast(dict[str, str], rt.redis.hgetall(redis_keys.batch_inflight(batch_id)))
    if not inflight:
        return
    pipe = rt.redis.pipeline(transaction=False)
    for job_id in inflight:
        pipe.hmget(redis_keys.job(job_id), ["status", "result", "error", "custom_id"])
    out: list[str] = []
    err: list[str] = []
    done: list[str] = []
    lost: list[str] = []
    counts: dict[str, int] = {}
    ending = fields.get("ending", "")
    for job_id, (status, result, error, custom_id) in zip(inflight, pipe.execute(), strict=True):
        line = inflight[job_id]
        if status is None:  # the record expired: the finalizer reports the line as lost
            done.append(job_id)
            lost.append(job_id)
        elif status == "succeeded":
            result = result or "null"  # a succeeded job always has one; never write a line that is not JSON
            out.append(f"{line}\t{output.succeeded_line(job_id, custom_id, result)}")
            for name, value in output.usage_counts(json.loads(result)).items():
                counts[name] = counts.get(name, 0) + value
            counts["completed"] = counts.get("completed", 0) + 1
            done.append(job_id)
        elif status == "failed":
            err.append(f"{line}\t{output.failed_line(job_id, custom_id, json.loads(error or '{}'))}")
            counts["failed"] = counts.get("failed", 0) + 1
            done.append(job_id)
        elif status == "expired":  # its deadline, the window's end, came while it waited for an attempt
            code, message = output.ENDING_ERRORS["expired"]
            err.append(f"{line}\t{output.error_line(job_id, custom_id, code, message)}")
            counts["failed"] = counts.get("failed", 0) + 1
            done.append(job_id)
        elif status == "cancelled":
            if not ending:  # cancelled on its own (DELETE /v1/jobs/{id}); a stopped batch's lines are told at the end
                err.append(f"{line}\t{output.error_line(job_id, custom_id, 'cancelled', 'The job was cancelled.')}")
                counts["failed"] = counts.get("failed", 0) + 1
            done.append(job_id)
    if not done:
        return
    expires_at = int(now) + int(fields.get("output_expires_s") or DEFAULT_OUTPUT_EXPIRY_S)
    for kind, lines in (("out", out), ("err", err)):
        if lines:
            wait(_write_part(brt.files, f"{batch_id}/parts/{kind}-{time.time_ns()}-{secrets.token_hex(4)}",
                             lines, expires_at))
    pipe = rt.redis.pipeline(transaction=True)
    pipe.hdel(redis_keys.batch_inflight(batch_id), *done)
    for job_id in done:
        # A finished line left its partition with its last transition; a record gone with its TTL leaves it to the
        # sweeper.
        pipe.delete(redis_keys.job(job_id), redis_keys.job_events(job_id))
    if lost:  # a finished job left the deadline index as it ended; a record that expired with its TTL did not
        pipe.zrem(redis_keys.DEADLINES, *lost)
    for name, value in counts.items():
        pipe.hincrby(redis_keys.batch(batch_id), name, value)
    pipe.execute()


async def _write_part(files: FileStore, name: str, lines: list[str], expires_at: int) -> None:
    async with files.writer(name) as writer:
        await writer.write(("\n".join(lines) + "\n").encode())
        await writer.commit(expires_at=expires_at)


def _finalize(brt: BatchRuntime, fields: dict[str, str], now: float) -> None:
    """Write the output and error files from the parts, each line once; record them; end the batch."""
    rt, batch_id = brt.rt, fields["id"]
    expires_at = int(now) + int(fields.get("output_expires_s") or DEFAULT_OUTPUT_EXPIRY_S)
    ending = fields.get("ending", "")
    try:
        written = wait(_write_outputs(brt.files, fields, expires_at, ending))
    except ObjectNotFound:
        _fail(brt, batch_id, now, "input_file_missing", f"The input file {fields['input_file_id']} no longer exists.")
        return
    pipe = rt.redis.pipeline(transaction=True)
    ids: dict[str, str] = {}
    for kind, (file_id, size) in written.files.items():
        record = file_records.new_file_fields(file_id, fields["owner"], size, now,
                                              f"{batch_id}_{kind}.jsonl", file_records.OUTPUT_PURPOSE, expires_at)
        pipe.hset(redis_keys.file(file_id), mapping=cast(Any, record))
        pipe.expire(redis_keys.file(file_id), file_records.record_ttl_s(expires_at, now))
        pipe.zadd(redis_keys.files_of(fields["owner"]), {file_id: now})
        ids[f"{kind}_file_id"] = file_id
    pipe.execute()
    final = ending or "completed"
    failed = int(fields.get("failed") or 0) + written.unseen
    if _advance(rt, batch_id, ("finalizing",), status=final, **{f"{final}_at": str(int(now))},
                failed=str(failed), **ids):
        log.info("batch %s %s", batch_id, final, extra={"batch_id": batch_id})
    wait(_delete_parts(brt.files, batch_id))
    rt.redis.delete(redis_keys.batch_inflight(batch_id))
    _ended(brt, batch_id)


@dataclass
class Written:
    files: dict[str, tuple[str, int]]  # "output" | "error" -> (file id, bytes)
    unseen: int  # request lines with no result: expired, cancelled or lost


async def _write_outputs(files: FileStore, fields: dict[str, str], expires_at: int, ending: str) -> Written:
    """Stream the parts (first occurrence of each line wins), then the input for lines never finished."""
    batch_id = fields["id"]
    seen = bytearray(int(fields.get("lines") or 0) // 8 + 1)
    out_id, err_id = new_file_id(), new_file_id()
    unseen = 0
    result: dict[str, tuple[str, int]] = {}
    async with files.writer(out_id) as out, files.writer(err_id) as err:
        names = [name async for name in files.names(f"{batch_id}/parts/")]
        for name in names:
            target = out if "/parts/out-" in name else err
            async for raw in files.lines(name):
                number, _, line = raw.partition(b"\t")
                n = int(number)
                if n // 8 >= len(seen):
                    seen.extend(bytes(n // 8 - len(seen) + 1))
                if seen[n // 8] & (1 << (n % 8)):
                    continue  # a line that ran twice (its part committed, then its worker died)
                seen[n // 8] |= 1 << (n % 8)
                await target.write(line + b"\n")
        code, message = output.ENDING_ERRORS[ending]
        line_no = 0
        async for raw in files.lines(fields["input_file_id"]):
            line_no += 1
            if not raw.strip() or (line_no // 8 < len(seen) and seen[line_no // 8] & (1 << (line_no % 8))):
                continue
            custom_id = _custom_id(raw)
            if custom_id is None:  # not a request (a batch stopped before its validation failed it)
                continue
            await err.write((output.error_line(None, custom_id, code, message) + "\n").encode())
            unseen += 1
        for kind, writer, file_id in (("output", out, out_id), ("error", err, err_id)):
            if writer.size:
                info = await writer.commit(expires_at=expires_at)
                result[kind] = (file_id, info.size)
    return Written(result, unseen)


def _custom_id(raw: bytes) -> str | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    return custom_id if isinstance(custom_id, str) and custom_id else None


async def _delete_parts(files: FileStore, batch_id: str) -> None:
    names = [name async for name in files.names(f"{batch_id}/parts/")]
    for name in names:
        await files.delete(name)


def resume_stalled(rt: Runtime, publish_step: Callable[[str], None], now: float | None = None) -> list[str]:
    """Batches not stepped for `batch_stall_s`: their chain of steps was lost with a worker; start it again."""
    now = time.time() if now is None else now
    stalled = cast(list[str], rt.redis.zrangebyscore(
        redis_keys.ACTIVE_BATCHES, 0, now - rt.settings.batch_stall_s, start=0, num=100))
    for batch_id in stalled:
        rt.redis.zadd(redis_keys.ACTIVE_BATCHES, {batch_id: now})
        publish_step(batch_id)
    if stalled:
        log.warning("resumed %d stalled batch(es)", len(stalled))
    return stalled


def sweep_files(files: FileStore, abandoned_write_s: float, now: float | None = None) -> int:
    """Delete the file store's expired objects (uploads, outputs, parts a crash left) and the writes cut off with
    their process (an upload whose API was killed), a bounded batch of each per sweep."""
    now = time.time() if now is None else now
    result = wait(files.sweep_expired())
    if result.deleted:
        log.info("file store: %d expired object(s) deleted", result.deleted)
    abandoned = wait(files.sweep_abandoned(started_before=now - abandoned_write_s))
    if abandoned:
        log.warning("file store: %d unfinished write(s) of killed processes removed", abandoned)
    return result.deleted + abandoned
