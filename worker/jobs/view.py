"""A job as its owner sees it: the body of GET /v1/jobs/{id} and of every webhook event.

Defined next to the records (not in the API) so a webhook carries exactly what GET shows.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmq.worker.jobs.record import NewJob, public_view

JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled", "expired"]


class AttemptPublic(BaseModel):
    n: int = Field(description="1 for the first attempt.")
    started_at: datetime | None = None
    duration_ms: float | None = None
    outcome: str = Field(description="'ok', 'http_<status>', or an error kind (timeout, connection_error, ...).")
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
    model_config = ConfigDict(extra="allow")

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


def job_json(fields: dict[str, str]) -> dict[str, Any]:
    """The JSON-ready public view of a stored record, as the API serves it."""
    return JobPublic.model_validate(public_view(fields)).model_dump(mode="json", exclude_none=True)


def job_json_bytes(fields: dict[str, str]) -> bytes:
    """The same view as `job_json`, serialized by pydantic in one step (the API's answer to a submission)."""
    return JobPublic.model_validate(public_view(fields)).model_dump_json(exclude_none=True).encode()


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
