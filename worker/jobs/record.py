"""A job as it lives in Redis: its statuses, the fields of its hash, and its public view.

The hash is flat strings; JSON-valued fields (request, metadata, result, error,
callback) are stored as JSON text, and attempts as JSON lines appended atomically.
"""

from __future__ import annotations

import functools
import json
import secrets
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["queued", "running", "retrying", "succeeded", "failed", "cancelled"]
Priority = Literal["high", "normal", "low"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
UNFINISHED: tuple[str, ...] = ("queued", "running", "retrying")

JOB_ID_PREFIX = "job_"
_JSON_FIELDS = ("metadata", "result", "error", "callback")
_FLOAT_FIELDS = ("created_at", "updated_at", "started_at", "finished_at", "next_attempt_at")
# Fields that never leave the store through the public view: internal ones, and the request, which is the
# caller's own and not part of JobPublic (parsing it, up to megabytes, only to drop it slowed every read).
_PRIVATE_FIELDS = ("key_token", "owner", "lease_until", "attempt_started_at", "attempt_count",
                   "callback_secret_token", "callback_attempts", "callback_next_at", "request", "watched",
                   "relay", "error_body")
# The proxy's final error body, kept whole for a relayed job (its caller gets it as the answer), up to this.
ERROR_BODY_MAX_CHARS = 64 * 1024


def new_job_id() -> str:
    """128 random bits, URL-safe: unguessable, so an id alone grants nothing."""
    return JOB_ID_PREFIX + secrets.token_urlsafe(16)


# One encoder for every record and event: json.dumps with arguments builds a new one on each call.
_compact_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(value: Any) -> str:
    return _compact_json(value)


@dataclass
class NewJob:
    """Everything recorded about a job at submission."""

    id: str
    owner: str
    key_token: str
    model: str
    request_json: str  # the chat body as JSON text, stored and sent to the proxy as it is
    environment: str
    priority: Priority
    max_attempts: int
    created_at: float
    app_id: str
    stream: bool = False
    metadata: dict[str, Any] | None = None
    callback: dict[str, Any] | None = None
    callback_secret_token: str | None = None
    # A caller waits on the job for the proxy's own answer (the OpenAI-compatible route): its event stream is
    # written from the start, a stream's chunks go to it as the proxy sent them, a final error keeps its body.
    relay: bool = False

    @functools.cached_property
    def fields(self) -> dict[str, str]:
        """The hash as recorded at submission (made once: the submit script and the 202 answer both use it)."""
        fields = {
            "id": self.id,
            "owner": self.owner,
            "key_token": self.key_token,
            "app_id": self.app_id,
            "model": self.model,
            "request": self.request_json,
            "environment": self.environment,
            "priority": self.priority,
            "max_attempts": str(self.max_attempts),
            "status": "queued",
            "created_at": repr(self.created_at),
            "updated_at": repr(self.created_at),
            "stream": "1" if self.stream else "0",
        }
        if self.metadata is not None:
            fields["metadata"] = dumps(self.metadata)
        if self.callback is not None:
            fields["callback"] = dumps(self.callback)
        if self.callback_secret_token is not None:
            fields["callback_secret_token"] = self.callback_secret_token
        if self.callback is not None:
            fields["callback_status"] = "pending"
        if self.relay:
            fields["relay"] = "1"
            fields["watched"] = "0,0"  # followed from submission: the stream holds everything after `queued`
        return fields


def state_change(status: str, at: float, **details: Any) -> dict[str, Any]:
    """One state-change event of a job: what its stream holds, and what its record tells (api.event_history)."""
    return {"type": "state", "status": status, "at": at, **details}


def state_event(status: str, at: float, **details: Any) -> str:
    """The JSON of one state-change event on a job's stream."""
    return dumps(state_change(status, at, **details))


def job_error(error_type: str, message: str) -> dict[str, Any]:
    """The `error` of a job that failed without an answer from the proxy to show."""
    return {"type": error_type, "message": message, "status_code": None, "body_excerpt": None}


def is_terminal_event(event: dict[str, Any]) -> bool:
    """A job's last state event: nothing follows it on the stream."""
    return event.get("type") == "state" and event.get("status") in TERMINAL


def parse_json_lines(text: str | None) -> list[dict[str, Any]]:
    if not text:
        return []
    return [json.loads(line) for line in text.split("\n") if line]


def public_view(fields: dict[str, str]) -> dict[str, Any]:
    """The job as callers see it (GET /v1/jobs/{id}, webhooks): no key, no owner."""
    view: dict[str, Any] = {k: v for k, v in fields.items() if k not in _PRIVATE_FIELDS}
    for name in _JSON_FIELDS:
        if name in view:
            view[name] = json.loads(view[name])
    for name in _FLOAT_FIELDS:
        if name in view:
            view[name] = float(view[name])
    view["max_attempts"] = int(fields.get("max_attempts", "1"))
    view["stream"] = fields.get("stream") == "1"
    view["attempts"] = parse_json_lines(fields.get("attempts"))
    view["deliveries"] = parse_json_lines(fields.get("deliveries"))
    callback = view.pop("callback", None)
    if callback:
        view["callback_url"] = callback["url"]
    return view
