"""The `/_mock/...` control API used by tests and the benchmark to steer the mock at runtime."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from llmq.mockproxy.errors import error_response, json_body_response
from llmq.mockproxy.faults import ConfigError
from llmq.mockproxy.scripts import StepError, parse_step
from llmq.mockproxy.state import STATE_KEY

PREFIX = "/_mock"


class _BadBody(ValueError):
    pass


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.read())
    except ValueError as exc:
        raise _BadBody("body must be JSON") from exc
    if not isinstance(body, dict):
        raise _BadBody("body must be a JSON object")
    return body


def _bad_request(message: str) -> web.Response:
    return error_response(400, message, "invalid_request_error", "invalid_mock_request")


async def health(request: web.Request) -> web.Response:
    return json_body_response(200, {"ok": True})


async def get_config(request: web.Request) -> web.Response:
    return json_body_response(200, request.app[STATE_KEY].config.as_dict())


async def post_config(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        state.update_config(await _json_object(request))
    except (_BadBody, ConfigError, TypeError) as exc:
        return _bad_request(str(exc))
    return json_body_response(200, state.config.as_dict())


async def get_scripts(request: web.Request) -> web.Response:
    return json_body_response(200, {"scripts": request.app[STATE_KEY].scripts.pending()})


async def post_scripts(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = await _json_object(request)
        model, responses = body.get("model"), body.get("responses")
        if not isinstance(model, str) or not model:
            raise _BadBody("'model' must be a non-empty string")
        if not isinstance(responses, list):
            raise _BadBody("'responses' must be a list of steps")
        steps = [parse_step(raw) for raw in responses]
    except (_BadBody, StepError) as exc:
        return _bad_request(str(exc))
    pending = state.scripts.add(model, steps)
    return json_body_response(200, {"model": model, "pending": pending})


async def delete_scripts(request: web.Request) -> web.Response:
    model = request.query.get("model")
    request.app[STATE_KEY].scripts.clear(model)
    return json_body_response(200, {"cleared": model if model is not None else "all"})


async def get_calls(request: web.Request) -> web.Response:
    calls = request.app[STATE_KEY].calls.list(request.query.get("model"))
    return json_body_response(200, {"count": len(calls), "calls": calls})


async def delete_calls(request: web.Request) -> web.Response:
    request.app[STATE_KEY].calls.clear()
    return json_body_response(200, {"cleared": True})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/health", health)
    app.router.add_get(f"{PREFIX}/config", get_config)
    app.router.add_post(f"{PREFIX}/config", post_config)
    app.router.add_get(f"{PREFIX}/scripts", get_scripts)
    app.router.add_post(f"{PREFIX}/scripts", post_scripts)
    app.router.add_delete(f"{PREFIX}/scripts", delete_scripts)
    app.router.add_get(f"{PREFIX}/calls", get_calls)
    app.router.add_delete(f"{PREFIX}/calls", delete_calls)
