"""/v1/jobs: submit a chat request, list the caller's jobs, read one (optionally waiting), cancel it."""

from __future__ import annotations

import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from llmq.api.deps import Caller, CallerDep, SettingsDep, StoreDep, StreamReaderDep, VaultDep
from llmq.api.direct_route import direct_route, header, json_response
from llmq.api.disconnect import unless_client_leaves
from llmq.api.errors import ApiError
from llmq.api.job_store import AsyncJobStore, UnknownCursor
from llmq.api.schemas import ErrorResponse, JobCreate, JobList, JobPublic
from llmq.api.stream_reader import NoPlace, StreamReader
from llmq.api.submission import build_job, check_callback, check_limits, record_and_queue, submission_arguments
from llmq.worker.jobs.record import TERMINAL
from llmq.worker.jobs.view import JobStatus, job_json_bytes, job_view, new_job_json_bytes
from llmq.worker.observability import metrics
from llmq.worker.tasks import enqueue_delivery

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60
MAX_LIST_LIMIT = 100
# What a listed job leaves out: the bulk of a record, read with GET /v1/jobs/{id}.
NOT_LISTED: set[str] = {"result", "attempts", "deliveries"}
IDEMPOTENCY_KEY_MAX_LENGTH = 255
JOB_ID_PATTERN = re.compile(r"^job_[A-Za-z0-9_-]{22}$")
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 409, 413, 415, 422, 503)
}


def _not_found(job_id: str) -> ApiError:
    return ApiError(404, "not_found", f"No job {job_id!r} for this key (unknown, expired, or another key's).")


def check_id(job_id: str) -> None:
    """An id that cannot exist is answered without asking Redis."""
    if not JOB_ID_PATTERN.match(job_id):
        raise _not_found(job_id)


def no_place(err: NoPlace) -> ApiError:
    return ApiError(503, "unavailable", f"Too many requests are waiting for jobs right now ({err}); try again "
                                        "in a second, or read the job without waiting.", headers={"Retry-After": "1"})


def check_owner(job_id: str, fields: dict[str, str], caller: Caller) -> dict[str, str]:
    """The record if it exists and belongs to the caller; 404 otherwise, either way."""
    if not fields or fields.get("owner") not in caller.owners:
        raise _not_found(job_id)
    fields["id"] = job_id  # the record's key names it, whatever its fields say
    return fields


def job_response(fields: dict[str, str], status_code: int = 200) -> Response:
    """A job's public view as the answer (serialized once; a damaged record still renders: `job_view`)."""
    return json_response(job_json_bytes(fields), status_code)


async def owned_fields(store: AsyncJobStore, job_id: str, caller: Caller) -> dict[str, str]:
    """The job's record if it exists and belongs to the caller; 404 otherwise, either way."""
    check_id(job_id)
    return check_owner(job_id, await store.fields(job_id), caller)


async def submit_job_arguments(request: Request) -> dict[str, Any]:
    return {**await submission_arguments(request, JobCreate),
            "idempotency_key": header(request, "idempotency-key", IDEMPOTENCY_KEY_MAX_LENGTH)}


async def submit_job(
    body: JobCreate,
    caller: CallerDep,
    settings: SettingsDep,
    store: StoreDep,
    vault: VaultDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
               description="Same key, same caller, within the TTL: the first job is returned."),
    ] = None,
) -> Response:
    """Accept a chat request and queue it; answers at once with the job's id."""
    check_limits(body, settings)
    await check_callback(body, settings)
    job = build_job(body, caller, settings, vault)
    (job_id,) = await record_and_queue(store, [(job, idempotency_key)], settings)
    headers = {"Location": f"/v1/jobs/{job_id}"}
    if job_id != job.id:
        headers["Idempotent-Replayed"] = "true"
        return json_response(job_json_bytes(await owned_fields(store, job_id, caller)), 200, headers)
    metrics.JOBS_SUBMITTED.labels(job.priority, job.environment).inc()
    return json_response(new_job_json_bytes(job), 202, headers)


router.add_api_route(
    "", submit_job, methods=["POST"], status_code=202, response_model=JobPublic, response_model_exclude_none=True,
    responses={200: {"model": JobPublic, "description": "Idempotent replay: the job this key created."}, **ERRORS},
    route_class_override=direct_route(submit_job_arguments),
)


@router.get("", response_model=JobList, responses=ERRORS)
async def list_jobs(
    caller: CallerDep,
    store: StoreDep,
    status: Annotated[
        list[JobStatus] | None, Query(description="Only jobs in this status; repeat it for several.")
    ] = None,
    after: Annotated[
        str | None, Query(max_length=64, description="The `next_after` of the previous page: jobs older than it.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT, description="Jobs per page.")] = 20,
) -> Response:
    """The caller's own jobs (those of its key), newest first, kept as long as their records.

    A page reads at most 1,000 jobs: with a `status` that few of them have, it can hold fewer than `limit` jobs
    and still have `has_more`; keep following `next_after`."""
    if after is not None and not JOB_ID_PATTERN.match(after):
        raise ApiError(400, "invalid_request", f"after={after!r} is not a job id: pass the previous page's "
                                               "next_after (or a job id of yours).")
    try:
        page = await store.list_jobs(caller.owners, frozenset(status) if status else None, after, limit)
    except UnknownCursor:
        raise ApiError(400, "invalid_request",
                       f"after={after!r} names no job of this key that is still kept (unknown, expired, or another "
                       "key's): start again without it.") from None
    data = b",".join(job_view(fields).model_dump_json(exclude_none=True, exclude=NOT_LISTED).encode()
                     for fields in page.records)
    tail = json.dumps({"has_more": page.has_more, "next_after": page.next_after})
    return json_response(b'{"object":"list","data":[' + data + b"]," + tail[1:].encode(), 200)


async def wait_for_job(
    store: AsyncJobStore, reader: StreamReader, job_id: str, wait_s: float, fields: dict[str, str], last_id: str
) -> dict[str, str]:
    try:
        async with reader.follow(job_id, last_id) as events:
            return await store.wait_until_finished(job_id, wait_s, fields, events)
    except NoPlace as err:
        raise no_place(err) from None


@router.get("/{job_id}", response_model=JobPublic, response_model_exclude_none=True, responses=ERRORS)
async def get_job(
    job_id: str,
    request: Request,
    caller: CallerDep,
    store: StoreDep,
    reader: StreamReaderDep,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish before answering.")
    ] = 0,
) -> Response:
    """A job's status, attempts, and result or error; with `wait`, answers as soon as it finishes."""
    if not wait:
        return job_response(await owned_fields(store, job_id, caller))
    check_id(job_id)
    # The record and its last event id in one read, so the wait starts exactly where the record was taken;
    # the same read has the worker write the final event the wait looks for.
    fields, last_id = await store.watch(job_id, caller.owners)
    check_owner(job_id, fields, caller)
    if fields.get("status") not in TERMINAL:
        # A client that leaves ends the wait at once: its place and its stream are given up with it.
        fields = await unless_client_leaves(request, wait_for_job(store, reader, job_id, wait, fields, last_id),
                                            fallback=fields)
        fields["id"] = job_id
    return job_response(fields)


@router.delete("/{job_id}", response_model=JobPublic, response_model_exclude_none=True, responses=ERRORS)
async def cancel_job(job_id: str, caller: CallerDep, store: StoreDep) -> Response:
    """Cancel a job that has not finished: no new proxy call starts for it, and a call in flight is aborted."""
    fields = await owned_fields(store, job_id, caller)
    cancelled, status = await cancel_unfinished(store, job_id, has_callback=bool(fields.get("callback")))
    if not cancelled:
        if status == "missing":
            raise _not_found(job_id)
        raise ApiError(409, "conflict",
                       f"The job has already finished ({status}); only unfinished jobs can be cancelled.")
    return job_response({**await store.fields(job_id), "id": job_id})


async def cancel_unfinished(store: AsyncJobStore, job_id: str, has_callback: bool) -> tuple[bool, str]:
    """Cancel a job if it has not finished: (cancelled, its status otherwise). Every cancel goes through here."""
    cancelled, status = await store.cancel(job_id)
    if cancelled:
        metrics.JOBS_FINISHED.labels("cancelled").inc()
        if has_callback:
            await run_in_threadpool(enqueue_delivery, job_id)
    return cancelled, status


@router.post(
    "/{job_id}/callback/retry", status_code=202, response_model=JobPublic, response_model_exclude_none=True,
    responses=ERRORS,
)
async def retry_callback(job_id: str, caller: CallerDep, store: StoreDep) -> Response:
    """Send a job's webhook again after its delivery ran out of attempts (or the receiver answered 410)."""
    fields = await owned_fields(store, job_id, caller)
    if not fields.get("callback"):
        raise ApiError(409, "conflict", "The job has no callback_url.")
    if not await store.reopen_callback(job_id):
        raise ApiError(409, "conflict", f"The callback is {fields.get('callback_status')}; only a failed (or gone) "
                                        "delivery can be sent again.")
    await run_in_threadpool(enqueue_delivery, job_id)
    return job_response({**await store.fields(job_id), "id": job_id}, 202)
