"""OpenAI's error shape, `{"error": {"message", "type", "param", "code"}}`, for the OpenAI-compatible routes.

The official SDK turns a status into an exception class (`openai._client.OpenAI._make_status_error`):
400 BadRequestError, 401 AuthenticationError, 403 PermissionDeniedError, 404 NotFoundError, 409 ConflictError,
422 UnprocessableEntityError, 429 RateLimitError, 500 and above InternalServerError. It reads `body["error"]`
into the exception's `body`, `code`, `param` and `type`, and these headers (`_base_client.py`):

- `x-request-id`: the exception's and the response's `_request_id` (here, the job id);
- `x-should-retry`: `true` or `false` overrides its own retry rule (408, 409, 429 and 5xx are retried);
- `retry-after-ms`, then `retry-after` (seconds or an HTTP date): its delay before retrying, when 0-60 s.

llmq's own errors on these routes (`ApiError`, validation, Redis down) are translated here, at the route's
boundary (`api.openai.route`); `/v1/jobs` keeps llmq's own shape.
"""

from __future__ import annotations

import json
import logging

import redis.exceptions
from fastapi import Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from llmq.api.errors import ApiError

log = logging.getLogger("llmq.api")

# The `type` OpenAI gives each status, as its own API answers.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}
REDIS_DOWN_RETRY_AFTER_S = 5


class OpenAIError(Exception):
    """An answer in OpenAI's error shape: a status, a message a person can act on, and OpenAI's fields."""

    def __init__(
        self, status_code: int, message: str, *, code: str | None = None, param: str | None = None,
        error_type: str | None = None, headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.code = code
        self.param = param
        self.error_type = error_type or ERROR_TYPES.get(status_code, "server_error")
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        error = {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}
        return json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")).encode()

    def response(self) -> Response:
        return Response(self.body(), status_code=self.status_code, headers=self.headers,
                        media_type="application/json")


def _field_path(loc: tuple[object, ...]) -> str:
    return ".".join(str(part) for part in loc if part != "body") or "body"


def from_validation(exc: RequestValidationError) -> OpenAIError:
    """A body (or header) that is not a chat request: 400, naming the first fields at fault."""
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "parse error")
            return OpenAIError(400, f"The body is not valid JSON: {detail}", code="invalid_json")
    parts = [f"{_field_path(tuple(e.get('loc', ())))}: {e.get('msg', '')}" for e in errors[:5]]
    first = tuple(errors[0].get("loc", ())) if errors else ()
    return OpenAIError(400, "; ".join(parts) or "The body is not a chat completions request.",
                       code="invalid_request", param=_field_path(first) if first else None)


def from_api_error(exc: ApiError) -> OpenAIError:
    """llmq's own error, in OpenAI's shape. A field llmq refuses (422 on /v1/jobs) is a bad request here, as
    OpenAI answers it."""
    status = 400 if exc.status_code == 422 else exc.status_code
    return OpenAIError(status, exc.message, code=exc.error_type, headers=exc.headers)


def from_http_error(exc: StarletteHTTPException) -> OpenAIError:
    message = str(exc.detail)
    if exc.status_code == 400:
        message = f"The body could not be read as UTF-8 JSON ({message})."
    return OpenAIError(exc.status_code, message, headers=dict(exc.headers or {}))


def redis_down(exc: Exception) -> OpenAIError:
    log.warning("redis unavailable: %s", type(exc).__name__)
    return OpenAIError(503, "Job storage (Redis) is unreachable; try again in a few seconds.",
                       code="unavailable", headers={"Retry-After": str(REDIS_DOWN_RETRY_AFTER_S)})


def translate(exc: Exception) -> OpenAIError | None:
    """The OpenAI-shaped answer to an error raised on an OpenAI route, or None for one nobody expected."""
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ApiError):
        return from_api_error(exc)
    if isinstance(exc, RequestValidationError):
        return from_validation(exc)
    if isinstance(exc, StarletteHTTPException):
        return from_http_error(exc)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return redis_down(exc)
    return None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    """OpenAI's error shape (for the OpenAPI document)."""

    error: OpenAIErrorDetail
