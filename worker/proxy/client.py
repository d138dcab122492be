"""The call to the proxy: `POST {base_url}/chat/completions` with the caller's key.

httpx2 transports per worker process, their pools sized together to the worker's
concurrency and used only on the process's event loop (`llmq.worker.runtime.event_loop`): hundreds of
waiting calls cost one thread. Requests go to the transport itself, not through an
`AsyncClient`: the client's layers (merging defaults and cookies, auth and redirect
handling, event hooks, storing the answer's cookies) were 7 % of a worker's instructions per
job, for features a call to the proxy does not use. The same goes for proxy variables in
the environment (`HTTPS_PROXY`): the proxy is an internal service and is called directly,
as webhooks are. Every failure leaves this module as an `UpstreamError` (see
`llmq.worker.proxy.errors`), so callers never see a third-party exception.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx2

from llmq.worker.jobs.record import dumps
from llmq.worker.proxy.errors import (
    TRANSPORT_ERRORS,
    InvalidCompletion,
    UpstreamError,
    UpstreamStatusError,
    proxy_error_message,
    transport_error,
)
from llmq.worker.proxy.retry_policy import parse_retry_after
from llmq.worker.proxy.streaming import CompletionAssembler, Delta
from llmq.worker.runtime import asyncio_network
from llmq.worker.settings import Settings
from llmq.worker.sse import MEDIA_TYPE, SseEvent, SseParser, is_event_stream

DeltaSink = Callable[[list[Delta]], None]
ChunkSink = Callable[[list[str]], None]


@dataclass(frozen=True)
class Completion:
    """A ChatCompletion: parsed, and as JSON text to store (the proxy's own text when it answered in one piece)."""

    data: dict[str, Any]
    text: str


def check_completion(body: bytes) -> Completion:
    """A 2xx body must be a chat completion; anything else is worth another attempt."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise InvalidCompletion("the proxy answered 2xx with a body that is not JSON", body=body) from err
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        message = proxy_error_message(body) if isinstance(data, dict) else None
        detail = f": {message}" if message else ""
        raise InvalidCompletion(f"the proxy answered 2xx without a chat completion{detail}", body=body)
    try:
        text = body.decode()
    except UnicodeDecodeError:  # JSON in UTF-16 or UTF-32, which json.loads reads too
        text = dumps(data)
    return Completion(data, text)


# httpx2's pool checks every connection it holds whenever a request starts or ends: with anyio's
# streams, one pool of 200 connections spent half the event loop's time on that (a poll(2) per idle
# connection). Several small pools keep each pass short: pools of 8 took 4-6 % less worker CPU per job
# than pools of 16 (3,000 jobs at 500 ms, two runs each), for the same memory per call. The check
# itself no longer makes a system call (`llmq.worker.runtime.asyncio_network`); the walk over the pool remains.
CONNECTIONS_PER_POOL = 8
# Sent with every call, as an AsyncClient would: who is calling, and that a compressed answer is welcome.
USER_AGENT = f"llmq python-httpx2/{httpx2.__version__}"


class _Pool:
    def __init__(self, transport: httpx2.AsyncBaseTransport) -> None:
        self.transport = transport
        self.in_flight = 0


class UpstreamClient:
    def __init__(self, settings: Settings, transport: httpx2.AsyncBaseTransport | None = None) -> None:
        """`transport` replaces the pools with one transport of the caller's (tests: `httpx2.MockTransport`)."""
        self._timeout = httpx2.Timeout(
            connect=settings.connect_timeout_s,
            read=settings.read_timeout_s,
            write=settings.connect_timeout_s,
            pool=settings.connect_timeout_s,
        ).as_dict()
        self._urls: dict[str, httpx2.URL] = {}  # parsed once per base URL: httpx2 parses text on every request
        if transport is not None:
            self._pools = [_Pool(transport)]
            return
        size = min(CONNECTIONS_PER_POOL, settings.worker_concurrency)
        count = -(-settings.worker_concurrency // size)
        limits = httpx2.Limits(max_connections=size, max_keepalive_connections=size)
        # One TLS context for every pool: each would otherwise load the CA bundle again
        # (13 pools: half a second of start-up and 10 MB).
        tls = httpx2.create_ssl_context()
        # Socket I/O on the loop's own transports rather than anyio's streams: 16 % less worker CPU per job.
        self._pools = [_Pool(asyncio_network.http_transport(tls, limits)) for _ in range(count)]

    async def complete(self, base_url: str, key: str, request: bytes) -> Completion:
        """One non-streaming call of `request` (the chat body as JSON); the ChatCompletion as the proxy sent it."""
        async with self._send(base_url, key, request, stream=False) as response:
            return check_completion(await response.aread())

    async def stream(
        self, base_url: str, key: str, request: bytes, on_delta: DeltaSink | None = None,
        on_chunk: ChunkSink | None = None,
    ) -> Completion:
        """One streaming call; the assembled completion is returned.

        As they come, deltas go to `on_delta`, and each chunk's `data:` payload, exactly as sent, to `on_chunk`
        (only chunks the assembler took: an error object or a broken chunk ends the attempt instead)."""
        async with self._send(base_url, key, request, stream=True) as response:
            if not is_event_stream(response.headers.get("content-type")):
                # The proxy may ignore `stream` and answer in one piece.
                return check_completion(await response.aread())
            assembler = CompletionAssembler()
            parser = SseParser()

            def take(events: list[SseEvent]) -> None:
                for event in events:
                    data = event.data
                    deltas = assembler.feed_data(data)
                    if deltas and on_delta is not None:
                        on_delta(deltas)
                    if on_chunk is not None and data.strip() and not assembler.done:
                        on_chunk([data])

            async for line in response.aiter_lines():
                take(parser.feed(line))
                if assembler.done:
                    break
            take(parser.end())  # a last event with no blank line after it (ignored once [DONE] was seen)
            result = assembler.result()
            return Completion(result, dumps(result))

    @asynccontextmanager
    async def _send(
        self, base_url: str, key: str, body: bytes, *, stream: bool
    ) -> AsyncIterator[httpx2.Response]:
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": MEDIA_TYPE if stream else "application/json",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": USER_AGENT,
        }
        # The least busy pool: with every call on one event loop, no lock is needed.
        url = self._urls.get(base_url)
        if url is None:
            url = self._urls[base_url] = httpx2.URL(f"{base_url}/chat/completions")
        request = httpx2.Request("POST", url, headers=headers, content=body, extensions={"timeout": self._timeout})
        pool = min(self._pools, key=lambda p: p.in_flight)
        pool.in_flight += 1
        try:
            resp = await pool.transport.handle_async_request(request)
            try:
                if not resp.is_success:
                    raw = await resp.aread()
                    message = proxy_error_message(raw) or resp.reason_phrase or "error"
                    raise UpstreamStatusError(
                        f"HTTP {resp.status_code} from the proxy: {message}",
                        status_code=resp.status_code,
                        body=raw,
                        retry_after_s=parse_retry_after(resp.headers, time.time()),
                    )
                yield resp
            finally:
                await resp.aclose()
        except TRANSPORT_ERRORS as err:
            raise transport_error(err) from err
        finally:
            pool.in_flight -= 1


_client_lock = threading.Lock()
_clients: dict[int, UpstreamClient] = {}


def client_for(settings: Settings) -> UpstreamClient:
    """The process-wide client: its pools serve every call of a worker, on the worker's event loop."""
    with _client_lock:
        client = _clients.get(id(settings))
        if client is None:
            client = _clients[id(settings)] = UpstreamClient(settings)
        return client


__all__ = ["UpstreamClient", "UpstreamError", "client_for"]
