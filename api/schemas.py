"""Request and response bodies of the public API (these become the OpenAPI docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
JobStatus = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]


class ChatMessage(BaseModel):
    """One chat message; vendor-specific fields pass through untouched."""

    model_config = ConfigDict(extra="allow")

    role: Role = Field(description="Who speaks: system, developer, user, assistant, tool or function.")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or a list of content parts (text, image_url, ...)."
    )


class ChatRequest(BaseModel):
    """A chat.completions request body, exactly as the proxy expects it.

    Only what the proxy needs is checked; every other parameter (temperature, tools,
    response_format, vendor extensions, ...) is forwarded as sent."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256, description="Model name as the proxy knows it.")
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation, at least one message.")
    stream: bool | None = Field(None, description="Call the proxy in streaming mode (live deltas on /events).")


class JobCreate(BaseModel):
    """A job: one chat request to run through the proxy, with retries."""

    model_config = ConfigDict(extra="forbid")

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
    attempts: list[AttemptPublic] = []
    result: dict[str, Any] | None = Field(None, description="The proxy's ChatCompletion, as received.")
    error: JobError | None = None
    metadata: dict[str, Any] | None = None
    callback_url: str | None = None
    callback_status: str | None = Field(None, description="pending, delivered, failed or gone (410).")
    deliveries: list[DeliveryPublic] = Field([], description="Webhook delivery attempts.")


class ErrorBody(BaseModel):
    type: str
    message: str
    fields: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    ok: bool
    checks: dict[str, str] = {}
