"""Routes that FastAPI documents from their endpoint's signature but that read their request by hand.

For every request FastAPI walks the endpoint's dependency tree, parses the body with `json.loads` and
validates it in Python mode, then validates what the endpoint returns against the response model once more
before `jsonable_encoder` turns it into JSON. On the submission routes, the service's hot path, that
machinery cost a third of a single `POST /v1/jobs` and a sixth of a 1,000-job batch (py-spy,
docs/performance.md).

A route made with `direct_route(resolve)` keeps its endpoint and decorator as they are, so the OpenAPI
document is unchanged, but each request calls the endpoint with the keyword arguments `resolve(request)`
reads off it, and the endpoint answers with a `Response` it serialized itself. Errors still go through the
app's exception handlers, in the shapes FastAPI gives them.

The signature stays the one source of truth: tests/api/test_direct_route.py resolves a table of requests,
generated from each route's FastAPI dependant (every header, every body field), both ways, FastAPI's and
`resolve`'s, and requires the same arguments or the same errors. A parameter added to the signature but not
to `resolve` fails it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

from llmq.api.errors import ApiError

Model = TypeVar("Model", bound=BaseModel)
Resolver = Callable[[Request], Awaitable[dict[str, Any]]]


def direct_route(resolve: Resolver) -> type[APIRoute]:
    """A route class whose endpoint is called with `**await resolve(request)` and must return a Response."""

    class DirectRoute(APIRoute):
        resolver = staticmethod(resolve)

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            endpoint = self.endpoint

            async def handle(request: Request) -> Response:
                return await endpoint(**await resolve(request))  # type: ignore[no-any-return]

            return handle

    return DirectRoute


def require_json(request: Request) -> None:
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "unsupported_media_type",
                       f"Send the job as JSON with 'Content-Type: application/json' (got {content_type or 'none'!r}).")


async def json_body(request: Request, model: type[Model]) -> Model:
    """The body parsed and validated in one pass by pydantic's JSON parser; errors located as FastAPI does."""
    body = await request.body()
    if not body:
        raise RequestValidationError([{"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}])
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as err:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error["loc"])} for error in err.errors(include_url=False)]
        ) from None
    if _may_hold_a_number_json_lacks(body):
        _refuse_numbers_json_lacks(body)
    return parsed


# Digits as '0' and the exponent's E as 'e', so one search finds any number beyond a double's range: an exponent
# of three digits, or 309 digits in a row. Searches over bytes, no regex: 3 µs for a 700-byte body (a regex of the
# same alternatives took 37 µs).
_DIGITS = bytes.maketrans(b"123456789E", b"000000000e")


def _may_hold_a_number_json_lacks(body: bytes) -> bool:
    """Whether the body may hold NaN, Infinity or a number that parses to an infinity; mostly it is only text."""
    if b"NaN" in body or b"Infinity" in body:
        return True
    shape = body.translate(_DIGITS)
    return b"0e000" in shape or b"0e+000" in shape or b"0" * 309 in shape


def _refuse_numbers_json_lacks(body: bytes) -> None:
    """422 naming each field that holds NaN, Infinity or a number too large for a double."""
    found: list[tuple[str | int, ...]] = []

    def walk(value: Any, loc: tuple[str | int, ...]) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            found.append(loc)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*loc, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*loc, index))

    walk(json.loads(body), ())
    if found:
        raise RequestValidationError([
            {"type": "finite_number", "loc": ("body", *loc), "input": None,
             "msg": "NaN, Infinity and numbers beyond a double's range are not a JSON number"}
            for loc in found[:50]
        ])


def header(request: Request, name: str, max_length: int) -> str | None:
    value = request.headers.get(name)
    if value is not None and len(value) > max_length:
        raise RequestValidationError([{
            "type": "string_too_long", "loc": ("header", name), "input": value, "ctx": {"max_length": max_length},
            "msg": f"String should have at most {max_length} characters",
        }])
    return value


def json_response(content: bytes | str, status_code: int, headers: dict[str, str] | None = None) -> Response:
    return Response(content, status_code=status_code, headers=headers, media_type="application/json")
