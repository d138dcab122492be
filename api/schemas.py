"""Request and response bodies of the public API (these become the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from llmq.worker.jobs.view import AttemptPublic, DeliveryPublic, JobError, JobPublic

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]


class ChatMessage(BaseModel):
    """One chat message; vendor-specific fields pass through untouched."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Role = Field(description="Who speaks: system, developer, user, assistant, tool or function.")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or a list of content parts (text, image_url, ...)."
    )


class ChatRequest(BaseModel):
    """A chat.completions request body, exactly as the proxy expects it.

    Only what the proxy needs is checked; every other parameter (temperature, tools,
    response_format, vendor extensions, ...) is forwarded as sent. The fields llmq reads take their own types only
    (strict: `"stream": "yes"` is refused, not read as true)."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256, description="Model name as the proxy knows it.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, at least one message.")
    stream: bool | None = Field(None, description="Call the proxy in streaming mode (live deltas on /events).")


class JobCreate(BaseModel):
    """A job: one chat request to run through the proxy, with retries."""

    # Strict: each field takes its own type only (`max_attempts: true` or `"3"` is refused, not coerced).
    model_config = ConfigDict(extra="forbid", strict=True)

    request: ChatRequest
    metadata: dict[str, Any] | None = Field(None, description="Caller's data, kept with the job and returned as is.")
    max_attempts: int | None = Field(None, ge=1, description="Attempts at most, first included (default from config).")
    environment: Literal["test", "prod"] | None = Field(None, description="Which proxy host to call.")
    priority: Literal["high", "normal", "low"] = Field("normal", description="Queue: high jobs are taken first.")
    callback_url: str | None = Field(
        None, max_length=2048, description="http(s) URL that receives the finished job, signed (Standard Webhooks)."
    )
    callback_secret: str | None = Field(
        None, description="Per-job signing secret, 'whsec_<base64>'; the service secret is used otherwise."
    )
    deadline: AwareDatetime | None = Field(
        None,
        strict=False,  # text to a time: numbers are refused below, so nothing is coerced loosely
        description="RFC 3339 time with a timezone, e.g. 2026-12-06T05:00:00Z: no attempt starts after it, and a job "
                    "still waiting then ends `expired`. In the future, and within the result TTL.",
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline_is_text(cls, value: Any) -> Any:
        # pydantic would read a number as Unix seconds; the API speaks RFC 3339 only.
        if value is not None and not isinstance(value, str | datetime):
            raise ValueError("must be an RFC 3339 time with a timezone, like 2026-12-06T05:00:00Z")
        return value


class ErrorBody(BaseModel):
    type: str
    message: str
    fields: list[dict[str, Any]] | None = None


class BatchItem(JobCreate):
    """One job of a batch: a job body, with its own optional idempotency key."""

    idempotency_key: str | None = Field(None, max_length=255, description="As the Idempotency-Key header, per job.")


MAX_BATCH_JOBS = 1000


class BatchCreate(BaseModel):
    """Up to 1,000 jobs in one request; each is checked on its own."""

    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[dict[str, Any]] = Field(
        min_length=1, max_length=MAX_BATCH_JOBS, description="Job bodies, each as for POST /v1/jobs (see BatchItem)."
    )


class BatchItemResult(BaseModel):
    index: int = Field(description="Position of the job in the request.")
    id: str | None = Field(None, description="The job's id, when accepted.")
    status: str | None = None
    replayed: bool | None = Field(None, description="True when its idempotency key returned an earlier job.")
    error: ErrorBody | None = Field(None, description="Why this job was refused; the others are unaffected.")


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    jobs: list[BatchItemResult]


class JobList(BaseModel):
    """A page of the caller's jobs, newest first (GET /v1/jobs)."""

    object: Literal["list"] = "list"
    data: list[JobPublic] = Field(description="Each job as GET /v1/jobs/{id} shows it, less its result, attempts "
                                              "and deliveries (read the job for those).")
    has_more: bool = Field(description="True when older jobs may follow: ask again with after=next_after.")
    next_after: str | None = Field(description="The id to pass as `after` for the next page; null on the last.")


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    ok: bool
    checks: dict[str, str] = {}


__all__ = [
    "AttemptPublic",
    "BatchCreate",
    "BatchItem",
    "BatchItemResult",
    "BatchResult",
    "ChatRequest",
    "DeliveryPublic",
    "ErrorResponse",
    "Health",
    "JobCreate",
    "JobError",
    "JobList",
    "JobPublic",
]
