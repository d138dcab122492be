"""The submission routes' fast resolvers against FastAPI's own resolution of the same signatures.

For each route made with `direct_route`, requests are generated from the route's FastAPI dependant (every header
it documents: absent, present, too long; every body field: of the wrong type, null) and resolved both ways:
by FastAPI, as if the route were a plain `APIRoute`, and by the route's `resolver`. Both must call the endpoint
with the same arguments, or refuse the request with the same error at the same place.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import pytest
from fastapi import FastAPI, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel

from llmq.api.errors import install_error_handlers
from llmq.api.main import create_app
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import load_settings

KEY = "4242:app-key-for-tests"
VALID_HEADERS = {"authorization": f"Bearer {KEY}", "idempotency-key": "same-job-once"}
JOB = {"request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}}
WRONG_VALUES = (12.5, {"no": ["such"]}, None)
WORDED_BY_THE_PARSER = ("invalid_request", "invalid_json")


SETTINGS = load_settings()  # LLMQ_DEV_MODE: see tests/conftest.py
# What the app's lifespan sets up; the resolvers hand the store and vault on without using them.
STATE = (SETTINGS, object(), KeyVault("x" * 32))
DIRECT_ROUTES = [r for r in create_app(SETTINGS).routes if isinstance(r, APIRoute) and hasattr(type(r), "resolver")]


def valid_body(model: type[BaseModel]) -> dict[str, Any]:
    return {"jobs": [JOB]} if "jobs" in model.model_fields else dict(JOB)


def body_cases(model: type[BaseModel]) -> dict[str, bytes]:
    """The valid body, broken as a whole, and each field set to values of the wrong type."""
    base = valid_body(model)
    cases = {"valid": json.dumps(base).encode(), "empty": b"", "not JSON": b'{"request": ', "a list": b"[]",
             "an unknown field": json.dumps({**base, "unknown": 1}).encode()}
    for name in model.model_fields:
        for value in WRONG_VALUES:
            cases[f"{name}={value!r}"] = json.dumps({**base, name: value}).encode()
    return cases


def flatten(dependant: Dependant) -> Dependant:
    """The route's parameters of every kind, its dependencies' included (what FastAPI documents)."""
    flat = Dependant()
    for sub in [dependant, *(flatten(d) for d in dependant.dependencies)]:
        for kind in ("path_params", "query_params", "header_params", "cookie_params", "body_params"):
            getattr(flat, kind).extend(getattr(sub, kind))
    return flat


def request_cases(route: APIRoute) -> list[Any]:
    flat = flatten(route.dependant)
    assert not flat.query_params and not flat.cookie_params and not flat.path_params, (
        f"{route.path}: the resolver reads headers and the body only; teach it the new parameters"
    )
    (body,) = flat.body_params
    model = body.field_info.annotation
    assert isinstance(model, type) and issubclass(model, BaseModel)
    headers = {param.alias.lower(): VALID_HEADERS.get(param.alias.lower(), "x") for param in flat.header_params}
    cases = [pytest.param(route, headers, payload, id=f"{route.path} body {name}")
             for name, payload in body_cases(model).items()]
    valid = json.dumps(valid_body(model)).encode()
    for param in flat.header_params:
        name = param.alias.lower()
        limit = next((m.max_length for m in param.field_info.metadata if hasattr(m, "max_length")), None)
        variants: list[tuple[str, str | None]] = [("absent", None), ("blank", " "), ("long", "Bearer " + "k" * 300)]
        if limit is not None:
            variants += [("at its max_length", "k" * limit), ("over its max_length", "k" * (limit + 1))]
        for variant, value in variants:
            changed = {k: v for k, v in headers.items() if k != name}
            if value is not None:
                changed[name] = value
            cases.append(pytest.param(route, changed, valid, id=f"{route.path} header {name} {variant}"))
    return cases


async def answer(app: FastAPI, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    """The status and body `app` answers a POST with (ASGI, in process)."""
    sent = False
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    raw = [(b"content-type", b"application/json"), *((k.encode(), v.encode()) for k, v in headers.items())]
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": raw, "root_path": "", "scheme": "http", "server": ("testserver", 80),
             "client": ("127.0.0.1", 1234), "http_version": "1.1", "asgi": {"version": "3.0"}}
    await app(scope, receive, send)
    return status, b"".join(chunks)


async def resolve(route: APIRoute, headers: dict[str, str], body: bytes, fastapi: bool) -> tuple[Any, ...]:
    """What the endpoint was called with, or how the request was refused, with FastAPI's resolution of the
    endpoint's signature or with the route's own resolver."""
    seen: dict[str, Any] = {}

    @functools.wraps(route.endpoint)  # the same signature, so FastAPI resolves the real endpoint's parameters
    async def endpoint(**kwargs: Any) -> Response:
        seen.update(kwargs)
        return Response(status_code=204)

    app = FastAPI()
    install_error_handlers(app)
    app.state.settings, app.state.store, app.state.vault = STATE
    route_class = APIRoute if fastapi else type(route)
    app.router.routes.append(route_class(route.path, endpoint, methods=list(route.methods)))
    status, content = await answer(app, route.path, headers, body)
    if status == 204:
        return ("called", seen)
    error = json.loads(content)["error"]
    if error["type"] in WORDED_BY_THE_PARSER:
        # pydantic's JSON mode words some messages its own way ("a valid array", not "a valid list"): the
        # status, the type and every field named must still agree.
        return ("refused", status, error["type"], [f["field"] for f in error.get("fields") or []])
    return ("refused", status, error)


CASES = [case for route in DIRECT_ROUTES for case in request_cases(route)]


def test_every_submission_route_is_covered() -> None:
    assert {route.path for route in DIRECT_ROUTES} == {"/v1/jobs", "/v1/jobs/batch"}


@pytest.mark.parametrize(("route", "headers", "body"), CASES)
def test_the_resolver_agrees_with_fastapi(route: APIRoute, headers: dict[str, str], body: bytes) -> None:
    by_fastapi = asyncio.run(resolve(route, headers, body, fastapi=True))
    by_resolver = asyncio.run(resolve(route, headers, body, fastapi=False))
    assert by_resolver == by_fastapi
