"""OpenAI-style error responses and raw bodies with caller-chosen headers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

# Headers as a mapping, or as (name, value) pairs where a name may repeat.
Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def body_response(status: int, body: bytes, content_type: str, headers: Headers | None = None) -> web.Response:
    """A response whose Content-Type the caller's headers may override (aiohttp refuses both at once)."""
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    merged: CIMultiDict[str] = CIMultiDict(pairs)
    if "Content-Type" not in merged:
        merged["Content-Type"] = content_type
    return web.Response(status=status, body=body, headers=merged)


def json_body_response(status: int, payload: Any, headers: Headers | None = None) -> web.Response:
    return body_response(status, json.dumps(payload).encode(), "application/json", headers)


def error_response(status: int, message: str, type_: str = "invalid_request_error",
                   code: str | int | None = None, headers: Headers | None = None) -> web.Response:
    return json_body_response(status, {"error": {"message": message, "type": type_, "code": code}}, headers)


def upstream_error(status: int, headers: Headers | None = None) -> web.Response:
    """The generic error body of an injected failure with the given status."""
    if status == 429:
        return error_response(429, "Rate limit reached for requests (mock)", "rate_limit_error",
                              "rate_limit_exceeded", headers)
    if status >= 500:
        return error_response(status, f"The upstream server had an error (mock status {status})",
                              "server_error", None, headers)
    return error_response(status, f"Mock error (status {status})", "invalid_request_error", None, headers)
