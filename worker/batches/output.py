"""The lines of a batch's output and error files, in OpenAI's format.

Output: `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error": null}`, the body the
proxy's answer as it sent it. Error file: the same shape with the proxy's non-2xx answer, or `"response": null`
and `"error": {"code", "message"}` when there was no answer (a timeout, the window's end, a cancel).
"""

from __future__ import annotations

import json
from typing import Any

from llmq.worker.jobs.record import dumps

ENDING_ERRORS = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "This request was not executed because the batch was cancelled."),
    "": ("line_lost", "This request's job was lost before it finished (its record expired)."),
}


def request_line_id(job_id: str) -> str:
    """The output line's own id: OpenAI's `batch_req_` prefix on the job id's random part."""
    return "batch_req_" + job_id.removeprefix("job_")


def succeeded_line(job_id: str, custom_id: str, result_json: str) -> str:
    """The proxy's answer spliced in as received: it is JSON already, and parsing it again would cost a line."""
    return (f'{{"id":{dumps(request_line_id(job_id))},"custom_id":{dumps(custom_id)},'
            f'"response":{{"status_code":200,"request_id":{dumps(job_id)},"body":{result_json}}},"error":null}}')


def failed_line(job_id: str, custom_id: str, error: dict[str, Any]) -> str:
    status = error.get("status_code")
    if isinstance(status, int):
        response = {"status_code": status, "request_id": job_id, "body": _error_body(error)}
        return dumps({"id": request_line_id(job_id), "custom_id": custom_id, "response": response, "error": None})
    return error_line(job_id, custom_id, str(error.get("type") or "failed"), str(error.get("message") or ""))


def error_line(job_id: str | None, custom_id: str, code: str, message: str) -> str:
    line_id = request_line_id(job_id) if job_id else "batch_req_none"
    return dumps({"id": line_id, "custom_id": custom_id, "response": None, "error": {"code": code, "message": message}})


def _error_body(error: dict[str, Any]) -> Any:
    """The proxy's error body when it was JSON; otherwise OpenAI's error shape around what it said."""
    excerpt = error.get("body_excerpt")
    if isinstance(excerpt, str):
        try:
            return json.loads(excerpt)
        except ValueError:
            pass
    return {"error": {"message": error.get("message") or excerpt or "", "type": error.get("type"), "code": None}}


def usage_counts(result: dict[str, Any]) -> dict[str, int]:
    """The batch's usage fields from one chat completion's `usage` (missing parts count 0)."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return {}

    def n(value: Any) -> int:
        return value if isinstance(value, int) and value > 0 else 0

    prompt = usage.get("prompt_tokens_details") or {}
    completion = usage.get("completion_tokens_details") or {}
    counts = {
        "input_tokens": n(usage.get("prompt_tokens")),
        "output_tokens": n(usage.get("completion_tokens")),
        "total_tokens": n(usage.get("total_tokens")),
        "cached_tokens": n(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0,
        "reasoning_tokens": n(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
    }
    return {k: v for k, v in counts.items() if v}
