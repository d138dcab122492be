"""The one map from transport failures to llmq's errors, as a table."""

from __future__ import annotations

import httpx2
import pytest

from llmq.worker.proxy.errors import (
    TRANSPORT_ERRORS,
    InvalidCompletion,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeout,
    transport_error,
)
from llmq.worker.proxy.retry_policy import is_retryable

CASES = [
    (httpx2.ConnectTimeout("slow"), UpstreamTimeout, "no answer from the proxy in time: ConnectTimeout: slow"),
    (httpx2.ReadTimeout(""), UpstreamTimeout, "no answer from the proxy in time: ReadTimeout"),
    (TimeoutError(), UpstreamTimeout, "no answer from the proxy in time: TimeoutError"),
    (httpx2.ConnectError("refused"), UpstreamConnectionError, "connection to the proxy failed: ConnectError: refused"),
    (httpx2.RemoteProtocolError("peer closed"), UpstreamConnectionError,
     "connection to the proxy failed: RemoteProtocolError: peer closed"),
    (httpx2.DecodingError("bad gzip"), InvalidCompletion,
     "the answer of the proxy could not be decoded: DecodingError: bad gzip"),
    (httpx2.StreamClosed(), UpstreamConnectionError,
     "the answer of the proxy broke off: StreamClosed: Attempted to read or stream content, but the stream has been "
     "closed."),
    (httpx2.InvalidURL("no host"), UpstreamConnectionError,
     "the address of the proxy is not a valid URL: InvalidURL: no host"),
    (ConnectionResetError(104, "reset"), UpstreamConnectionError,
     "connection to the proxy failed: ConnectionResetError: [Errno 104] reset"),
]


@pytest.mark.parametrize(("err", "kind", "message"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_each_transport_error_has_one_llmq_error(err: Exception, kind: type[UpstreamError], message: str) -> None:
    assert isinstance(err, TRANSPORT_ERRORS)
    mapped = transport_error(err)
    assert type(mapped) is kind and mapped.message == message
    assert is_retryable(mapped), "no answer, or a broken one, is always worth another attempt"


def test_the_peer_is_named() -> None:
    assert transport_error(httpx2.ConnectError("x"), "the receiver").message.startswith(
        "connection to the receiver failed"
    )
