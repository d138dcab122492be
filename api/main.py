"""The HTTP API: FastAPI app factory and its lifespan (Redis pools, key vault)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from llmq.api import redis_client
from llmq.api.body_limit import BodyLimitMiddleware
from llmq.api.errors import install_error_handlers
from llmq.api.job_store import AsyncJobStore, Quotas
from llmq.api.memory_guard import MemoryGuard
from llmq.api.openai import batches, chat_completions, files
from llmq.api.openai.route import BASE_PATHS
from llmq.api.routes import batch, events, health, jobs, metrics
from llmq.api.stream_reader import StreamReader
from llmq.api.uploads import upload_body_limit
from llmq.worker.celery_app import app as celery_app
from llmq.worker.files.store import open_store
from llmq.worker.jobs.unfinished import trusted_app_ids
from llmq.worker.observability.logs import configure_logging
from llmq.worker.runtime.allocator import return_large_blocks
from llmq.worker.runtime.gc_tuning import freeze_startup_objects
from llmq.worker.secrets.key_vault import vault_for
from llmq.worker.settings import Settings, get_settings

BROKER_CHECK_TIMEOUT_S = 2.0


def _broker_check(settings: Settings, redis_client: aioredis.Redis):  # type: ignore[no-untyped-def]
    async def check() -> str:
        try:
            if settings.effective_broker_url == settings.redis_url:
                await asyncio.wait_for(redis_client.ping(), BROKER_CHECK_TIMEOUT_S)
            else:
                def connect() -> None:
                    with celery_app.connection_for_write() as conn:
                        conn.ensure_connection(max_retries=1, timeout=BROKER_CHECK_TIMEOUT_S)

                await asyncio.wait_for(asyncio.to_thread(connect), BROKER_CHECK_TIMEOUT_S + 1)
            return "ok"
        except Exception as err:
            return f"unreachable: {type(err).__name__}"

    return check


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = redis_client.connect(settings, settings.redis_socket_timeout_s)
        # Every long-poll and event stream of the process waits on this one connection (no socket timeout:
        # its reads block by design).
        reader = StreamReader(redis_client.connect(settings, None, single_connection=True), client,
                              settings.max_waiters, settings.waiter_queue_s)
        app.state.settings = settings
        app.state.redis = client
        app.state.memory = MemoryGuard(client, settings.redis_high_water)
        quotas = Quotas(settings.app_max_unfinished, settings.unknown_apps_max_unfinished, trusted_app_ids(settings))
        app.state.store = AsyncJobStore(client, settings.result_ttl_s, quotas, app.state.memory,
                                        settings.fair_direct_jobs if settings.fair_turns else None)
        app.state.stream_reader = reader
        app.state.vault = vault_for(settings.server_secret, settings.previous_secrets)
        app.state.broker_check = _broker_check(settings, client)
        app.state.files = open_store(settings)
        reader.start()
        freeze_startup_objects()
        return_large_blocks()
        yield
        await reader.aclose()
        await app.state.files.aclose()
        await client.aclose()

    # /docs and /redoc with Swagger UI's and ReDoc's files served by this app, not a CDN: they work on networks
    # without internet access (FastAPI's "Custom Docs UI Static Assets" guide, packaged by fastapi-offline).
    app = FastAPIOffline(
        title="llmq",
        version="0.1.0",
        description=(
            "Asynchronous front door for an OpenAI-compatible LLM proxy: submit a chat request, get a job id "
            "at once; llmq calls the proxy with your key, retries what can be retried, and keeps the result."
        ),
        lifespan=lifespan,
        # A path with a trailing slash is 404: Starlette's redirect builds its Location from the Host header.
        redirect_slashes=False,
    )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes, route_limits={
        # The upload route counts its own bytes and answers first; this is the backstop.
        f"{base_path}/files": (upload_body_limit(settings.files_max_upload_bytes), "LLMQ_FILES_MAX_UPLOAD_BYTES")
        for base_path in BASE_PATHS
    })
    install_error_handlers(app)
    # The routes themselves, not `include_router`: FastAPI wraps an included router in a route that
    # matches the request against the router's routes and then again to handle it, about a tenth of a
    # request's CPU (instructions under callgrind: /healthz 522k → 467k, POST /v1/jobs 1,088k → 988k).
    # Each router already carries its prefix, tags and responses; the OpenAPI document is unchanged.
    for router in (health.router, batch.router, jobs.router, events.router, metrics.router, chat_completions.router,
                   files.router, batches.router):
        app.router.routes.extend(router.routes)
    return app


def app_from_env() -> FastAPI:
    """Entry point for `uvicorn --factory llmq.api.main:app_from_env`."""
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
