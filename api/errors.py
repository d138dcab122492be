"""One error envelope for every 4xx/5xx: `{"error": {"type", "message", "fields"?}}`."""

from __future__ import annotations

import logging

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("llmq.api")


class ApiError(Exception):
    """An error meant for the caller, with a status and a message a person can act on."""

    def __init__(self, status_code: int, error_type: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type
        self.message = message
        self.headers = headers


def error_response(status_code: int, error_type: str, message: str, **extra: object) -> JSONResponse:
    return JSONResponse({"error": {"type": error_type, "message": message, **extra}}, status_code=status_code)


def _field_path(loc: tuple[object, ...]) -> str:
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts) or "body"


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    for err in errors:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            return error_response(400, "invalid_json", f"The body is not valid JSON: {ctx.get('error', 'parse error')}")
    fields = [{"field": _field_path(tuple(e.get("loc", ()))), "message": e.get("msg", "")} for e in errors]
    summary = "; ".join(f"{f['field']}: {f['message']}" for f in fields[:5])
    return error_response(422, "invalid_request", summary, fields=fields[:50])


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    response = error_response(exc.status_code, exc.error_type, exc.message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    types = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
             415: "unsupported_media_type"}
    message = str(exc.detail)
    if exc.status_code == 400:
        # Starlette's own parse failure (for instance bytes that are not UTF-8).
        message = f"The body could not be read as UTF-8 JSON ({message})."
    response = error_response(exc.status_code, types.get(exc.status_code, "http_error"), message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


# Redis's refusals, most specific first: (exception, message, Retry-After seconds). Starlette picks a handler by
# the exception's class hierarchy, so `RedisError` answers for whatever the others do not name.
REDIS_FAILURES: tuple[tuple[type[redis.exceptions.RedisError], str, int], ...] = (
    (redis.exceptions.ConnectionError, "Job storage (Redis) is unreachable; try again in a few seconds.", 5),
    (redis.exceptions.TimeoutError, "Job storage (Redis) is unreachable; try again in a few seconds.", 5),
    (redis.exceptions.OutOfMemoryError,
     "Job storage (Redis) is full and refuses new writes; nothing was recorded. Try again once jobs have drained.",
     30),
    (redis.exceptions.BusyLoadingError, "Job storage (Redis) is loading its data; try again in a few seconds.", 5),
    (redis.exceptions.ReadOnlyError, "Job storage (Redis) is read-only (a failover?); try again in a few seconds.", 5),
    (redis.exceptions.RedisError, "Job storage (Redis) refused the request; nothing was recorded. Try again shortly.",
     5),
)


def _redis_failure(message: str, retry_after_s: int):  # type: ignore[no-untyped-def]
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        log.warning("redis refused a request: %s: %.200s", type(exc).__name__, exc)
        response = error_response(503, "unavailable", message)
        response.headers["Retry-After"] = str(retry_after_s)
        return response

    return handle


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ApiError, _api_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    for exc_class, message, retry_after_s in REDIS_FAILURES:
        app.add_exception_handler(exc_class, _redis_failure(message, retry_after_s))
