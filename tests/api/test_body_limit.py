"""The body limit counts bodies as they stream, per route, without buffering them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.types import Message, Receive, Scope, Send

from llmq.api.body_limit import BodyLimitMiddleware
from llmq.api.errors import install_error_handlers
from tests.stack import Stack

LIMIT = 1000
UPLOAD_LIMIT = 5000


def app_under_test() -> Any:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> JSONResponse:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
        return JSONResponse({"size": size})

    @app.post("/upload")
    async def upload(request: Request) -> JSONResponse:
        return await echo(request)

    return BodyLimitMiddleware(app, LIMIT, {"/upload": (UPLOAD_LIMIT, "LLMQ_UPLOAD_LIMIT")})


def call(app: Any, path: str, chunks: list[bytes], declared: int | None = None,
         method: str = "POST") -> tuple[int, dict[str, Any], int, dict[bytes, bytes]]:
    """Status, JSON answer, chunks the app took, response headers."""
    headers = [(b"content-type", b"application/octet-stream")]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope: Scope = {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b"",
                    "http_version": "1.1", "scheme": "http", "server": ("127.0.0.1", 80), "root_path": ""}
    pending = list(chunks)
    taken = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal taken
        if not pending:
            return {"type": "http.disconnect"}
        taken += 1
        chunk = pending.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    async def send(message: Message) -> None:
        sent.append(message)

    async def run(receive: Receive, send: Send) -> None:
        await app(scope, receive, send)

    asyncio.run(run(receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), taken, dict(start["headers"])


@pytest.mark.parametrize(("path", "chunks", "status", "taken"), [
    ("/echo", [b"x" * 400] * 2, 200, 2),
    ("/echo", [b"x" * 400] * 10, 413, 3),  # stops at the chunk that crosses 1000 bytes
    ("/echo", [b"x" * 1001], 413, 1),
    ("/upload", [b"x" * 900] * 5, 200, 5),  # 4500 bytes: under the route's own limit
    ("/upload", [b"x" * 900] * 50, 413, 6),
])
def test_streamed_bodies_are_counted(path: str, chunks: list[bytes], status: int, taken: int) -> None:
    got_status, answer, got_taken, _ = call(app_under_test(), path, chunks)
    assert (got_status, got_taken) == (status, taken), answer
    if status == 413:
        assert answer["error"]["type"] == "body_too_large"
        setting = "LLMQ_UPLOAD_LIMIT" if path == "/upload" else "LLMQ_MAX_BODY_BYTES"
        assert setting in answer["error"]["message"]
    else:
        assert answer == {"size": sum(map(len, chunks))}


@pytest.mark.parametrize(("path", "declared", "status"), [
    ("/echo", LIMIT + 1, 413), ("/upload", UPLOAD_LIMIT + 1, 413), ("/upload", LIMIT + 1, 200)])
def test_a_declared_length_over_the_limit_is_refused_before_reading(path: str, declared: int, status: int) -> None:
    got_status, _, taken, headers = call(app_under_test(), path, [b"x" * declared], declared=declared)
    assert got_status == status
    if status == 413:
        assert taken == 0 and headers[b"connection"] == b"close"


def test_an_app_without_error_handlers_still_gets_a_413() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive()).get("more_body"):
            pass

    status, answer, taken, _ = call(BodyLimitMiddleware(bare, LIMIT), "/any", [b"x" * 600] * 4)
    assert (status, taken) == (413, 2)
    assert "LLMQ_MAX_BODY_BYTES" in answer["error"]["message"]


def test_other_methods_pass_untouched() -> None:
    async def bare(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    status, _, _, _ = call(BodyLimitMiddleware(bare, LIMIT), "/any", [b"x" * 5000], method="GET")
    assert status == 204


def test_a_chunked_submission_over_the_limit_is_413(stack: Stack) -> None:
    def body() -> Iterator[bytes]:  # no Content-Length: only counting can stop it
        yield b'{"request": {"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(5):
            yield b"x" * (1024 * 1024)
        yield b'"}]}}'

    with stack.client() as client:
        response = client.post("/v1/jobs", content=body(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "LLMQ_MAX_BODY_BYTES" in response.json()["error"]["message"]
