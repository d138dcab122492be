"""A job as its owner sees it: the body of GET /v1/jobs/{id} and of every webhook event.

Defined next to the records (not in the API) so a webhook carries exactly what GET shows.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import from_json

from llmq.worker.jobs.record import NewJob, public_view

log = logging.getLogger("llmq.worker.jobs")
JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled", "expired"]


class AttemptPublic(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    n: int = Field(description="1 for the first attempt.")
    started_at: datetime | None = None
    duration_ms: float | None = None
    outcome: str = Field(description="'ok', 'http_<status>', an error kind (timeout, connection_error, ...), or "
                                     "'cancelled' for a call the job was cancelled during.")
    status_code: int | None = Field(None, description="HTTP status from the proxy, if it answered.")
    error_type: str | None = None
    message: str | None = None
    retry_in_s: float | None = Field(None, description="Delay chosen before the next attempt.")
    finished_at: datetime | None = None


class JobError(BaseModel):
    type: str = Field(description="http_status, timeout, connection_error, invalid_completion, ...")
    message: str
    status_code: int | None = Field(None, description="The proxy's HTTP status, when it answered.")
    body_excerpt: str | None = Field(None, description="The start of the proxy's answer.")


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    n: int
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float | None = None


class JobPublic(BaseModel):
    """A job as its owner sees it."""

    id: str
    status: JobStatus
    model: str
    environment: str
    priority: str
    max_attempts: int
    stream: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    next_attempt_at: datetime | None = Field(None, description="When a retrying job is due again.")
    deadline: datetime | None = Field(
        None, description="No attempt starts after this (UTC); a job still waiting then ends `expired`."
    )
    # Factories, not `[]`: pydantic deep-copies a mutable default on every validation (12 → 3 µs a job view).
    attempts: list[AttemptPublic] = Field(default_factory=list)
    result: dict[str, Any] | None = Field(None, description="The proxy's ChatCompletion, as received.")
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    callback_status: str | None = Field(None, description="pending, delivered, failed or gone (410).")
    deliveries: list[DeliveryPublic] = Field(default_factory=list, description="Webhook delivery attempts.")


# What a damaged record shows for a field it must have but cannot give (see `job_view`).
_STAND_INS: dict[str, Any] = {
    "id": "", "model": "", "environment": "unknown", "priority": "unknown", "max_attempts": 0, "stream": False,
    "created_at": 0.0,
}
_LISTS: dict[str, type[BaseModel]] = {"attempts": AttemptPublic, "deliveries": DeliveryPublic}


def job_view(fields: dict[str, str]) -> JobPublic:
    """The public view of a stored record, whatever it holds: what cannot be shown is left out.

    Records are only ever written by llmq's own scripts, but a reader must not fail on one that was damaged (by
    hand, by an older version, by a bug): one bad attempt line would otherwise make the whole job unreadable.
    A required field that cannot be read gets a stand-in; an unreadable status shows as `failed` with an error
    saying why, since no script will move such a job on."""
    view = public_view(fields)
    try:
        return JobPublic.model_validate(view)
    except ValidationError as err:
        return _salvaged(view, err)


def _salvaged(view: dict[str, Any], err: ValidationError) -> JobPublic:
    for _ in range(3):  # stand-ins are valid by construction; the loop only bounds a surprise
        dropped: set[str] = set()
        for problem in err.errors():
            loc = problem["loc"]
            name = str(loc[0]) if loc else ""
            if name in _LISTS and len(loc) > 1 and isinstance(loc[1], int):
                _mend_item(view[name], loc[1], str(loc[2]) if len(loc) > 2 else "", _LISTS[name])
            else:
                dropped.add(name)
        for name in _LISTS:
            if name in view:
                view[name] = [item for item in view[name] if item is not None]
        for name in dropped:
            view.pop(name, None)
        if "status" in dropped:
            view["status"] = "failed"
            view.setdefault("error", {"type": "unreadable_record",
                                      "message": "The job's stored record has no readable status; it will not run."})
        for name in dropped & _STAND_INS.keys():
            view[name] = _STAND_INS[name]
        view.setdefault("updated_at", view.get("created_at", 0.0))
        log.warning("job record partly unreadable: %s", ", ".join(sorted(dropped)) or "attempts or deliveries",
                    extra={"job_id": view.get("id")})
        try:
            return JobPublic.model_validate(view)
        except ValidationError as again:
            err = again
    raise err


def _mend_item(items: list[Any], index: int, field: str, model: type[BaseModel]) -> None:
    """An attempt or delivery loses the field it cannot show, or is left out (None) if that field is required."""
    item = items[index]
    if item is None:
        return
    if field in model.model_fields and not model.model_fields[field].is_required():
        item.pop(field, None)
    else:
        items[index] = None


def job_json(fields: dict[str, str]) -> dict[str, Any]:
    """The JSON-ready public view of a stored record (a webhook's payload): NaN and infinities shown as null."""
    return from_json(job_json_bytes(fields))  # type: ignore[no-any-return]


def job_json_bytes(fields: dict[str, str]) -> bytes:
    """The public view of a stored record as JSON text, serialized by pydantic in one step (the API's answers)."""
    return job_view(fields).model_dump_json(exclude_none=True).encode()


def new_job_json_bytes(job: NewJob) -> bytes:
    """`job_json_bytes(job.fields)` for a job just recorded, from the job itself: parsing its record back
    into a view took half the time of this answer."""
    view: dict[str, Any] = {
        "id": job.id, "status": "queued", "model": job.model, "environment": job.environment,
        "priority": job.priority, "max_attempts": job.max_attempts, "stream": job.stream,
        "created_at": job.created_at, "updated_at": job.created_at, "metadata": job.metadata,
        "deadline": job.deadline,
    }
    if job.callback is not None:
        view["callback_url"] = job.callback["url"]
        view["callback_status"] = "pending"
    return JobPublic.model_validate(view).model_dump_json(exclude_none=True).encode()
