"""Errors raised while calling the proxy, in one tree.

    UpstreamError                 anything that went wrong talking to the proxy
    ├── UpstreamStatusError       the proxy answered with a non-2xx status
    ├── UpstreamConnectionError   no answer: refused, reset, protocol error
    │   └── UpstreamTimeout       no answer in time
    ├── InvalidCompletion         a 2xx that is not a chat completion
    └── StreamIncomplete          a stream that ended before its finish

A failure below HTTP becomes one of these in one place, `transport_error`, for every caller: the
proxy client raises it `from` the original, the webhook sender records its message. (The asyncio
network backend, `llmq.worker.runtime.asyncio_network`, raises httpcore2's own errors instead, as
any httpcore backend must; httpx2 turns those into its own, which this map then translates.)
Whether an error is worth another attempt is decided in one place: `llmq.worker.proxy.retry_policy`.
"""

from __future__ import annotations

import json

import httpx2

BODY_EXCERPT_CHARS = 500


def excerpt(text: str | bytes | None, limit: int = BODY_EXCERPT_CHARS) -> str | None:
    """The first `limit` characters of a body, for error reports."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return text if len(text) <= limit else text[:limit] + "…"


def proxy_error_message(body: bytes) -> str | None:
    """The proxy's own explanation, from OpenAI-style or platform-style error bodies."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for name in ("msg", "message", "detail"):
        if data.get(name):
            return str(data[name])
    return None


class UpstreamError(Exception):
    """Anything that went wrong talking to the proxy."""

    kind = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        body: str | bytes | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.body_excerpt = excerpt(body)
        self.retry_after_s = retry_after_s
        self.body = body  # whole, for a caller waiting on the proxy's own answer (api.openai)

    def body_text(self, limit: int) -> str | None:
        """The proxy's whole answer as text, cut at `limit` characters."""
        if self.body is None:
            return None
        text = self.body.decode("utf-8", errors="replace") if isinstance(self.body, bytes) else self.body
        return text[:limit]

    def to_dict(self) -> dict[str, object]:
        return {
            "type": self.kind,
            "message": self.message,
            "status_code": self.status_code,
            "body_excerpt": self.body_excerpt,
        }


class UpstreamStatusError(UpstreamError):
    """The proxy answered with a non-2xx status."""

    kind = "http_status"


class UpstreamConnectionError(UpstreamError):
    """No answer from the proxy: connection refused, reset, or a protocol error."""

    kind = "connection_error"


class UpstreamTimeout(UpstreamConnectionError):
    """The proxy did not answer within the configured timeout."""

    kind = "timeout"


class InvalidCompletion(UpstreamError):
    """A 2xx answer that is not a chat completion (not JSON, no choices, an error object)."""

    kind = "invalid_completion"


class StreamIncomplete(UpstreamError):
    """A streamed answer that ended before `[DONE]` or before a finish reason."""

    kind = "stream_incomplete"


# Everything a request through httpx2 may raise below HTTP: its own errors (a bad gzip body is a `DecodingError`,
# not a `TransportError`), a stream read twice, and the socket's.
TRANSPORT_ERRORS = (httpx2.HTTPError, httpx2.StreamError, httpx2.InvalidURL, OSError)

# Each as llmq's error, with what to say; the first match wins, so subclasses come before their bases.
_TRANSPORT_ERROR_MAP: tuple[tuple[type[Exception], type[UpstreamError], str], ...] = (
    (httpx2.TimeoutException, UpstreamTimeout, "no answer from {peer} in time"),
    (TimeoutError, UpstreamTimeout, "no answer from {peer} in time"),
    (httpx2.DecodingError, InvalidCompletion, "the answer of {peer} could not be decoded"),
    (httpx2.StreamError, UpstreamConnectionError, "the answer of {peer} broke off"),
    (httpx2.InvalidURL, UpstreamConnectionError, "the address of {peer} is not a valid URL"),
    (Exception, UpstreamConnectionError, "connection to {peer} failed"),
)


def transport_error(err: Exception, peer: str = "the proxy") -> UpstreamError:
    """llmq's error for `err`, one of `TRANSPORT_ERRORS`, naming the original: raise it `from err`."""
    detail = str(err).strip()
    cause = f"{type(err).__name__}: {detail}" if detail else type(err).__name__
    for source, target, text in _TRANSPORT_ERROR_MAP:
        if isinstance(err, source):
            return target(f"{text.format(peer=peer)}: {cause}")
    raise TypeError(f"not a transport error: {cause}")  # unreachable: the map ends with Exception
