"""/v1/jobs: submit a chat request, read it (optionally waiting), cancel it."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from llmq.api.deps import Caller, CallerDep, SettingsDep, StoreDep, VaultDep
from llmq.api.direct_route import direct_route, header, json_response
from llmq.api.errors import ApiError
from llmq.api.job_store import AsyncJobStore
from llmq.api.schemas import ErrorResponse, JobCreate, JobPublic
from llmq.api.submission import build_job, check_callback, check_limits, record_and_queue, submission_arguments
from llmq.worker.jobs.record import TERMINAL, public_view
from llmq.worker.jobs.view import job_json_bytes, new_job_json_bytes
from llmq.worker.observability import metrics
from llmq.worker.tasks import enqueue_delivery

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_WAIT_S = 60
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


def check_owner(job_id: str, fields: dict[str, str], caller: Caller) -> dict[str, str]:
    """The record if it exists and belongs to the caller; 404 otherwise, either way."""
    if not fields or fields.get("owner") != caller.owner:
        raise _not_found(job_id)
    return fields


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


@router.get("/{job_id}", response_model=JobPublic, response_model_exclude_none=True, responses=ERRORS)
async def get_job(
    job_id: str,
    caller: CallerDep,
    store: StoreDep,
    wait: Annotated[
        float, Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for the job to finish before answering.")
    ] = 0,
) -> dict[str, Any]:
    """A job's status, attempts, and result or error; with `wait`, answers as soon as it finishes."""
    if not wait:
        return public_view(await owned_fields(store, job_id, caller))
    check_id(job_id)
    # The record and its last event id in one read, so the wait starts exactly where the record was taken;
    # the same read has the worker write the final event the wait looks for.
    fields, last_id = await store.watch(job_id, caller.owner)
    check_owner(job_id, fields, caller)
    if fields.get("status") not in TERMINAL:
        fields = await store.wait_until_finished(job_id, wait, fields, last_id) or fields
    return public_view(fields)


@router.delete("/{job_id}", response_model=JobPublic, response_model_exclude_none=True, responses=ERRORS)
async def cancel_job(job_id: str, caller: CallerDep, store: StoreDep) -> dict[str, Any]:
    """Cancel a job that has not finished; no new proxy call starts for it."""
    fields = await owned_fields(store, job_id, caller)
    cancelled, status = await cancel_unfinished(store, job_id, has_callback=bool(fields.get("callback")))
    if not cancelled:
        if status == "missing":
            raise _not_found(job_id)
        raise ApiError(409, "conflict",
                       f"The job has already finished ({status}); only unfinished jobs can be cancelled.")
    return public_view(await store.fields(job_id))


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
async def retry_callback(job_id: str, caller: CallerDep, store: StoreDep) -> dict[str, Any]:
    """Send a job's webhook again after its delivery ran out of attempts (or the receiver answered 410)."""
    fields = await owned_fields(store, job_id, caller)
    if not fields.get("callback"):
        raise ApiError(409, "conflict", "The job has no callback_url.")
    if not await store.reopen_callback(job_id):
        raise ApiError(409, "conflict", f"The callback is {fields.get('callback_status')}; only a failed (or gone) "
                                        "delivery can be sent again.")
    await run_in_threadpool(enqueue_delivery, job_id)
    return public_view(await store.fields(job_id))
