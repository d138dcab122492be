"""The call to the proxy: `POST {base_url}/chat/completions` with the caller's key.

One pooled httpx2 client per worker process, sized to the worker's concurrency. Every
failure leaves this module as an `UpstreamError` (see `worker.errors`), so callers
never see a third-party exception.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx2

from worker.errors import (
    InvalidCompletion,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamStatusError,
    UpstreamTimeout,
    proxy_error_message,
)
from worker.retry_policy import parse_retry_after
from worker.settings import Settings
from worker.streaming import CompletionAssembler, Delta, iter_sse_data

DeltaSink = Callable[[list[Delta]], None]


def check_completion(body: bytes) -> dict[str, Any]:
    """A 2xx body must be a chat completion; anything else is worth another attempt."""
    try:
        data = json.loads(body)
    except ValueError as err:
        raise InvalidCompletion("the proxy answered 2xx with a body that is not JSON", body=body) from err
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list) or not data["choices"]:
        message = proxy_error_message(body) if isinstance(data, dict) else None
        detail = f": {message}" if message else ""
        raise InvalidCompletion(f"the proxy answered 2xx without a chat completion{detail}", body=body)
    return data


class UpstreamClient:
    def __init__(self, settings: Settings) -> None:
        concurrency = settings.worker_concurrency
        self._client = httpx2.Client(
            timeout=httpx2.Timeout(
                connect=settings.connect_timeout_s,
                read=settings.read_timeout_s,
                write=settings.connect_timeout_s,
                pool=settings.connect_timeout_s,
            ),
            limits=httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._client.close()

    def complete(self, base_url: str, key: str, request: dict[str, Any]) -> dict[str, Any]:
        """One non-streaming call; the ChatCompletion as the proxy sent it."""
        with self._send(base_url, key, request, stream=False) as response:
            return check_completion(response.read())

    def stream(self, base_url: str, key: str, request: dict[str, Any], on_delta: DeltaSink) -> dict[str, Any]:
        """One streaming call; deltas go to `on_delta` as they come, the assembled completion is returned."""
        with self._send(base_url, key, request, stream=True) as response:
            if "text/event-stream" not in response.headers.get("content-type", ""):
                # The proxy may ignore `stream` and answer in one piece.
                return check_completion(response.read())
            assembler = CompletionAssembler()
            for data in iter_sse_data(response.iter_lines()):
                deltas = assembler.feed_data(data)
                if deltas:
                    on_delta(deltas)
                if assembler.done:
                    break
            return assembler.result()

    @contextmanager
    def _send(self, base_url: str, key: str, request: dict[str, Any], *, stream: bool) -> Iterator[httpx2.Response]:
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        body = json.dumps(request, ensure_ascii=False).encode()
        try:
            with self._client.stream("POST", f"{base_url}/chat/completions", content=body, headers=headers) as resp:
                if not resp.is_success:
                    raw = resp.read()
                    message = proxy_error_message(raw) or resp.reason_phrase or "error"
                    raise UpstreamStatusError(
                        f"HTTP {resp.status_code} from the proxy: {message}",
                        status_code=resp.status_code,
                        body=raw,
                        retry_after_s=parse_retry_after(resp.headers, time.time()),
                    )
                yield resp
        except httpx2.TimeoutException as err:
            raise UpstreamTimeout(f"no answer from the proxy in time ({type(err).__name__})") from err
        except httpx2.TransportError as err:
            raise UpstreamConnectionError(f"connection to the proxy failed: {type(err).__name__}: {err}") from err
        except httpx2.StreamError as err:
            raise UpstreamConnectionError(f"the proxy's answer broke off: {type(err).__name__}") from err


_client_lock = threading.Lock()
_clients: dict[int, UpstreamClient] = {}


def client_for(settings: Settings) -> UpstreamClient:
    """The process-wide client (one pool shared by every thread of a worker)."""
    with _client_lock:
        client = _clients.get(id(settings))
        if client is None:
            client = _clients[id(settings)] = UpstreamClient(settings)
        return client


__all__ = ["UpstreamClient", "UpstreamError", "client_for"]
