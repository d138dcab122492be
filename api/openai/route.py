"""The route class of every OpenAI-compatible route, and the base paths that choose the environment.

Errors are translated by the route itself rather than by app-wide exception handlers, so the OpenAI shape
stays on these routes and `/v1/jobs` keeps llmq's own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from llmq.api.openai.errors import translate
from llmq.worker.settings import Environment

log = logging.getLogger("llmq.api")

# Base path → environment, mirroring the proxy guide's two hosts; `/v1` is the configured default.
BASE_PATHS: dict[str, Environment | None] = {"/v1": None, "/test/v1": "test", "/prod/v1": "prod"}


class OpenAIRoute(APIRoute):
    """An APIRoute whose errors answer in OpenAI's shape (`api.openai.errors`)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_in_openai_shape(request: Request) -> Response:
            try:
                return await handle(request)
            except Exception as exc:
                error = translate(exc)
                if error is None:
                    raise
                return error.response()

        return handle_in_openai_shape
