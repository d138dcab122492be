"""What a caller of the OpenAI-compatible route gets for its finished job.

    job ended                                    answer
    succeeded                                    200, the proxy's body as received
    failed, the proxy's last answer a 4xx        that status, the proxy's whole error body
    failed, the proxy's last answer a 5xx        502, naming the proxy's status
    failed, no answer in time                    504
    failed otherwise (reset, garbage, ...)       502, naming what went wrong
    cancelled                                    409
    expired (its deadline passed unstarted)      504
    still unfinished when the wait ran out       504, naming the job: it stays readable at /v1/jobs/{id}

Every answer names the job in `x-request-id` (the SDK's `_request_id`) and carries `x-should-retry: false`:
llmq already spent the job's attempts, so the SDK must not multiply them.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response

from llmq.api.openai.errors import OpenAIError
from llmq.worker.jobs.record import parse_json_lines


def job_headers(job_id: str) -> dict[str, str]:
    return {"x-request-id": job_id, "x-should-retry": "false"}


def _attempts_note(fields: dict[str, str]) -> str:
    count = len(parse_json_lines(fields.get("attempts")))
    return f"after {count} attempt{'s' if count != 1 else ''}"


def failure(fields: dict[str, str]) -> OpenAIError:
    """The OpenAI-shaped error for a job that did not succeed (the table above, less the 4xx relay)."""
    job_id = fields.get("id", "")
    status = fields.get("status")
    headers = job_headers(job_id)
    if status == "cancelled":
        return OpenAIError(409, f"Job {job_id} was cancelled before it finished.", code="job_cancelled",
                           headers=headers)
    if status == "expired":
        return OpenAIError(504, f"Job {job_id} reached its deadline before a proxy call could start.",
                           code="deadline_expired", headers=headers)
    error: dict[str, Any] = json.loads(fields["error"]) if fields.get("error") else {}
    kind = str(error.get("type") or "failed")
    message = str(error.get("message") or "the job failed")
    proxy_status = error.get("status_code")
    where = f"(job {job_id}, {_attempts_note(fields)})"
    if kind == "timeout":
        return OpenAIError(504, f"The proxy did not answer in time {where}: {message}", code="upstream_timeout",
                           headers=headers)
    if isinstance(proxy_status, int) and proxy_status >= 500:
        return OpenAIError(502, f"The proxy answered {proxy_status} {where}: {message}",
                           code=f"upstream_{proxy_status}", headers=headers)
    return OpenAIError(502, f"The call failed {where}: {message}", code=kind, headers=headers)


def finished_answer(fields: dict[str, str]) -> Response:
    """The answer to a call whose job is finished."""
    job_id = fields.get("id", "")
    if fields.get("status") == "succeeded":
        return Response(fields.get("result", ""), 200, headers=job_headers(job_id), media_type="application/json")
    error: dict[str, Any] = json.loads(fields["error"]) if fields.get("error") else {}
    proxy_status = error.get("status_code")
    if fields.get("status") == "failed" and isinstance(proxy_status, int) and 400 <= proxy_status < 500:
        return _proxy_error(job_id, proxy_status, fields.get("error_body") or error.get("body_excerpt") or "")
    return failure(fields).response()


def _proxy_error(job_id: str, status: int, body: str) -> Response:
    """The proxy's own 4xx, status and body as it sent them."""
    try:
        json.loads(body)
        media_type = "application/json"
    except ValueError:
        media_type = "text/plain; charset=utf-8"
    return Response(body, status, headers=job_headers(job_id), media_type=media_type)


def still_running(job_id: str, wait_s: float) -> OpenAIError:
    return OpenAIError(
        504, f"Job {job_id} did not finish within this call's wait of {wait_s:g} s; it goes on: read its result "
             f"with GET /v1/jobs/{job_id}.",
        code="wait_exceeded", headers=job_headers(job_id))
