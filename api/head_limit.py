"""Refuse a request whose head is over `LLMQ_MAX_HEAD_BYTES` with 431, before the head is read whole.

uvicorn's httptools parser has no limit of its own, and it gathers each header's name and value whole (copying
it as it grows) before handing it on: a 30 MB `Authorization` header was held, and its job's 401 given, only
once all of it had arrived. `HeadLimitProtocol` is uvicorn's httptools protocol with two counts:

- whole chunks that arrive while one head is open (it began before them and is still open after them) are all
  head: past the limit, 431 and the connection closed, whatever the parser has kept to itself. What a
  connection holds of a head is thus bounded by the limit plus the two chunks at its ends (a read is at most
  256 KiB);
- a head that ends is counted exactly (the request target and every header's name and value) when the chunks it
  came in hold more than the limit, so a head of one or two chunks over the limit is refused as well. Smaller
  requests skip that count: the protocol costs 1.5 % more instructions per `GET /healthz`, 0.9 % per
  `POST /v1/jobs` (callgrind, 2,000 requests each).

The API is started with `uvicorn --http llmq.api.head_limit:HeadLimitProtocol` (`API_HTTP_PROTOCOL`) wherever it
runs. uvicorn names this class nowhere in its documentation: what it relies on is in the manifest of
`llmq.worker.runtime`, checked by `tests/worker/runtime/test_private_names.py`.
"""

from __future__ import annotations

import http
import json
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from llmq.worker.settings import get_settings

API_HTTP_PROTOCOL = "llmq.api.head_limit:HeadLimitProtocol"
STATUS_LINE = b"HTTP/1.1 431 " + http.HTTPStatus(431).phrase.encode() + b"\r\n"

log = logging.getLogger("llmq.api")


class HeadTooLarge(Exception):
    """Raised in a parser callback; httptools turns it into a parser error, which uvicorn answers through
    `send_400_response`, and this protocol answers 431 there instead."""


class HeadLimitProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:  # uvicorn's own arguments, whatever they are
        super().__init__(*args, **kwargs)
        self.max_head_bytes = get_settings().max_head_bytes
        self.received = 0  # bytes handed to the parser on this connection
        self.chunk_start = 0  # where the chunk being parsed begins
        self.head_open = False  # between a request's first byte and the end of its headers
        self.head_start = 0  # the open head lies after this: the start of the chunk it began in
        self.head_counted_from = 0  # the end of that chunk: what follows while the head is open is all head
        self.head_too_large = False

    def data_received(self, data: bytes) -> None:
        self.chunk_start = self.received
        self.received += len(data)
        super().data_received(data)
        # The parser keeps an unfinished header to itself; whole chunks that arrived while one head was open count.
        if (self.head_open and self.received - self.head_counted_from > self.max_head_bytes
                and not self.transport.is_closing()):
            self.refuse_head()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_open = True
        self.head_start = self.chunk_start
        self.head_counted_from = self.received

    def on_headers_complete(self) -> None:
        self.head_open = False
        # Counted exactly only when the chunks it came in could hold more than the limit (they may hold a body).
        if self.received - self.head_start > self.max_head_bytes and (
                len(self.url) + sum(len(name) + len(value) for name, value in self.headers) > self.max_head_bytes):
            self.head_too_large = True
            raise HeadTooLarge
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self.head_too_large:
            self.refuse_head()
        else:
            super().send_400_response(msg)

    def refuse_head(self) -> None:
        """431 and the connection closed: the rest of the head is never read."""
        log.warning("request refused: its head is over LLMQ_MAX_HEAD_BYTES (%d bytes)", self.max_head_bytes)
        body = json.dumps({"error": {"type": "header_too_large", "message": (
            f"The request's target and headers are over the limit of {self.max_head_bytes} bytes "
            "(LLMQ_MAX_HEAD_BYTES).")}}).encode()
        content = [STATUS_LINE]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(body),
                        b"connection: close\r\n\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()
