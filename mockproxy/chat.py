"""The `POST .../chat/completions` handler: validation, then one outcome (normal, scripted or a fault)."""

from __future__ import annotations

import json
import time
from typing import Any

from aiohttp import web

from llmq.mockproxy.auth import INVALID_KEY_MESSAGE, authenticate
from llmq.mockproxy.completions import (
    ChatRequest,
    RequestError,
    build_answer,
    completion_body,
    cut_stream_events,
    parse_request,
    stream_events,
)
from llmq.mockproxy.connection import abort_connection
from llmq.mockproxy.errors import body_response, error_response, json_body_response, upstream_error
from llmq.mockproxy.faults import OK, Outcome, choose_outcome, latency_seconds
from llmq.mockproxy.scripts import Step
from llmq.mockproxy.state import STATE_KEY, MockState

_GARBAGE_HTML = b"<html>upstream hiccup</html>"
_GARBAGE_JSON = {"code": 500, "msg": "internal error"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    config = state.config
    credential = authenticate(request.headers.get("Authorization"), config.accept_keys)
    if credential is None:
        state.calls.record(model=None, app_id=None, stream=False, at=time.time(), outcome="unauthorized",
                           status=401)
        return error_response(401, INVALID_KEY_MESSAGE, "invalid_request_error", "invalid_api_key")

    try:
        chat = _parse(await request.read())
    except RequestError as exc:
        state.calls.record(model=None, app_id=credential.app_id, stream=False, at=time.time(),
                           outcome="bad_request", status=400)
        return error_response(400, str(exc), "invalid_request_error", "invalid_request")

    if config.models and chat.model not in config.models:
        state.calls.record(model=chat.model, app_id=credential.app_id, stream=chat.stream, at=time.time(),
                           outcome="model_not_found", status=404)
        return error_response(404, f"The model `{chat.model}` does not exist", "invalid_request_error",
                              "model_not_found")

    step, outcome, delay = _decide(state, chat)
    # Recorded before any sleeping, so a hanging call is already visible to the test that waits on it.
    state.calls.record(model=chat.model, app_id=credential.app_id, stream=chat.stream, at=time.time(),
                       outcome=outcome.kind, status=outcome.status)
    if delay > 0:
        await state.sleeper.sleep(delay)
    return await _serve(request, state, chat, outcome, step)


def _parse(raw: bytes) -> ChatRequest:
    try:
        body: Any = json.loads(raw)
    except ValueError as exc:
        raise RequestError("We could not parse the JSON body of your request.") from exc
    return parse_request(body)


def _decide(state: MockState, chat: ChatRequest) -> tuple[Step | None, Outcome, float]:
    """The queued scripted step, else a plain answer for a scripted model, else a random draw."""
    step = state.scripts.next_step(chat.model)
    if step is not None:
        status = step.status if step.kind == "status" else None if step.kind in ("hang", "reset") else 200
        return step, Outcome(step.kind, status), step.latency_ms / 1000.0
    if chat.model in state.scripts:
        return None, OK, 0.0
    faults = state.config.faults
    return None, choose_outcome(faults, state.rng, stream=chat.stream), latency_seconds(faults, state.rng)


async def _serve(request: web.Request, state: MockState, chat: ChatRequest, outcome: Outcome,
                 step: Step | None) -> web.StreamResponse:
    kind = outcome.kind
    faults = state.config.faults
    if kind == "ok":
        return await _answer(request, state, chat)
    if kind == "status":
        assert outcome.status is not None
        return _status_response(outcome.status, step, faults.retry_after_s)
    if kind == "hang":
        seconds = step.seconds if step is not None and step.seconds is not None else faults.hang_s
        await state.sleeper.sleep(seconds)
        # A hang never answers; once it is over the connection is simply dropped.
        abort_connection(request)
        return web.Response()
    if kind == "reset":
        abort_connection(request)
        return web.Response()
    if kind == "garbage":
        return _garbage(state, step)
    if kind == "stream_cut":
        return await _cut(request, state, chat, step)
    raise AssertionError(f"unhandled outcome {kind!r}")


async def _answer(request: web.Request, state: MockState, chat: ChatRequest) -> web.StreamResponse:
    answer = build_answer(chat)
    if not chat.stream:
        return json_body_response(200, completion_body(answer))
    events = stream_events(answer, include_usage=chat.include_usage)
    return await _send_events(request, state, events)


async def _send_events(request: web.Request, state: MockState, events: list[bytes],
                       cut_after_s: float = 0.0) -> web.StreamResponse:
    chunk_delay_ms = state.config.faults.chunk_delay_ms
    response = web.StreamResponse(headers=_SSE_HEADERS)
    await response.prepare(request)
    try:
        if chunk_delay_ms <= 0:
            # One write keeps fast streams cheap; the client still parses separate events.
            await response.write(b"".join(events))
        else:
            for index, event in enumerate(events):
                if index:
                    await state.sleeper.sleep(chunk_delay_ms / 1000.0)
                await response.write(event)
        if cut_after_s > 0:  # a stream that stalls before it breaks: its chunks are surely read first
            await response.drain()
            await state.sleeper.sleep(cut_after_s)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client went away mid-stream; nothing left to do
    return response


async def _cut(request: web.Request, state: MockState, chat: ChatRequest, step: Step | None) -> web.StreamResponse:
    answer = build_answer(chat)
    if chat.stream:
        events = cut_stream_events(answer, step.chunks if step is not None else None)
        pause_s = step.seconds if step is not None and step.seconds is not None else 0.0
        return await _send_events(request, state, events, cut_after_s=pause_s)
    # A plain request cannot be cut between events, so its body is cut short instead.
    body = json.dumps(completion_body(answer)).encode()
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    try:
        await response.write(body[: len(body) // 2])
        await response.drain()
    except ConnectionResetError:
        return response
    abort_connection(request)
    return response


def _status_response(status: int, step: Step | None, retry_after_s: float) -> web.Response:
    if step is None:
        headers = {"Retry-After": f"{retry_after_s:g}"} if status == 429 else None
        return upstream_error(status, headers)
    if not step.has_body:
        return upstream_error(status, step.headers)
    return _raw_body(status, step.body, step.headers)


def _garbage(state: MockState, step: Step | None) -> web.Response:
    if step is not None and step.has_body:
        return _raw_body(200, step.body, step.headers)
    headers = step.headers if step is not None else None
    if state.next_garbage_is_html():
        return body_response(200, _GARBAGE_HTML, "text/html; charset=utf-8", headers)
    return json_body_response(200, _GARBAGE_JSON, headers)


def _raw_body(status: int, body: Any, headers: dict[str, str]) -> web.Response:
    if isinstance(body, str):
        return body_response(status, body.encode(), "text/plain; charset=utf-8", headers)
    return json_body_response(status, body, headers)
