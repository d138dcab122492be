"""Refuse request bodies over their route's size with 413, counting them as they stream in.

Nothing is buffered here: the body reaches the route chunk by chunk, and the chunk that crosses the limit
raises `BodyTooLarge` (a 413 HTTPException, answered by the app's error handlers) instead of being
handed on. A declared Content-Length over the limit is answered before any of the body is read. Most
routes read JSON of at most `LLMQ_MAX_BODY_BYTES`; a few (the file upload) stream far more to a store and
get a larger limit of their own.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int, setting: str) -> None:
        super().__init__(413, f"The request body is over the limit of {limit} bytes ({setting}).")


class BodyLimitMiddleware:
    def __init__(
        self, app: ASGIApp, max_body_bytes: int, route_limits: Mapping[str, tuple[int, str]] | None = None
    ) -> None:
        """`route_limits`: path -> (limit, the setting that sets it), for routes that take larger bodies."""
        self.app = app
        self.default = (max_body_bytes, "LLMQ_MAX_BODY_BYTES")
        self.route_limits = dict(route_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit, setting = self.route_limits.get(scope["path"], self.default)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, BodyTooLarge(limit, setting))
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise BodyTooLarge(limit, setting)
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge as err:  # raised where no error handler turned it into an answer
            if started:
                raise
            await _too_large(send, err)


async def _too_large(send: Send, err: BodyTooLarge) -> None:
    payload = json.dumps({"error": {"type": "body_too_large", "message": err.detail}}).encode()
    # `connection: close`: the rest of the body is never read, so the connection cannot serve another request.
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
