"""The aiohttp application of the mock proxy and helpers to run it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from llmq.mockproxy.admin import add_admin_routes
from llmq.mockproxy.chat import chat_completions
from llmq.mockproxy.config import MockConfig
from llmq.mockproxy.state import STATE_KEY, MockState

BASE_PATH = "/openai-compatible/v1"
# Prompts can be large; the real proxy accepts far more than aiohttp's 1 MiB default.
MAX_BODY_BYTES = 64 * 1024 * 1024


def create_app(config: MockConfig | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = MockState(config or MockConfig())
    app.router.add_post(f"{BASE_PATH}/chat/completions", chat_completions)
    app.on_shutdown.append(_wake_sleepers)
    add_admin_routes(app)
    return app


async def _wake_sleepers(app: web.Application) -> None:
    # Hanging and slow requests end at once, so a stop does not wait for them.
    app[STATE_KEY].sleeper.wake_all()


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}{BASE_PATH}"


@contextlib.asynccontextmanager
async def running_server(app: web.Application, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve `app` until the block exits; yields the base URL with the port actually bound."""
    runner = web.AppRunner(
        app,
        access_log=None,  # one log line per request would dominate the cost of a benchmark
        handler_cancellation=True,  # a client giving up on a hang frees the sleeping handler
        shutdown_timeout=1.0,  # hanging requests must not hold up a stop
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=2048, reuse_address=True)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield base_url(host, bound_port)
    finally:
        await runner.cleanup()


async def serve_until_signal(config: MockConfig, host: str, port: int,
                             on_ready: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_server(create_app(config), host, port) as url:
        on_ready(url)
        await stop.wait()


def run(config: MockConfig, host: str, port: int, on_ready: Callable[[str], None]) -> None:
    """Blocking entry point; uses uvloop when it is installed because it roughly doubles throughput."""
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_until_signal(config, host, port, on_ready))
