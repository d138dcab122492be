"""The call to the proxy against a real loopback server, and what the worker keeps of a 2xx answer."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest
import uvloop

from llmq.worker.proxy.client import UpstreamClient, check_completion
from llmq.worker.proxy.errors import InvalidCompletion, UpstreamError, UpstreamStatusError, UpstreamTimeout
from llmq.worker.settings import load_settings

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "你好"}, "finish_reason": "stop"}]}


def test_the_stored_text_is_the_proxys_own() -> None:
    body = json.dumps(COMPLETION, ensure_ascii=False, indent=2).encode()
    completion = check_completion(body)
    assert completion.data == COMPLETION
    assert completion.text == body.decode(), "kept as received: no parse-and-dump on the way to Redis"


def test_a_completion_in_utf16_is_stored_as_utf8_json() -> None:
    completion = check_completion(json.dumps(COMPLETION).encode("utf-16"))
    assert completion.data == COMPLETION and json.loads(completion.text) == COMPLETION


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"error": {"message": "quota"}}', b'{"choices": []}', b"[]"])
def test_anything_but_a_completion_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidCompletion):
        check_completion(body)


class Proxy:
    """A loopback HTTP/1.1 server standing in for the proxy: records each request's headers, answers by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                target = head.split(" ")[1]
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in head.split("\r\n")[1:] if ":" in line)}
                await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append({"path": target, **headers})
                if target.startswith("/busy/"):
                    body, status, extra = b'{"error": {"message": "slow down"}}', "429 Too Many Requests", \
                        "Retry-After: 7\r\n"
                elif target.startswith("/hang/"):
                    await reader.read()
                    return
                else:
                    body, status, extra = gzip.compress(json.dumps(COMPLETION).encode()), "200 OK", \
                        "Content-Encoding: gzip\r\nContent-Type: application/json\r\n"
                writer.write(f"HTTP/1.1 {status}\r\n{extra}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def call(proxy: Proxy, path: str, **settings: Any) -> Any:
    """`UpstreamClient.complete` against `proxy` at `path`, on uvloop as in a worker; the result or the error."""

    async def scenario() -> Any:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{path}"
        client = UpstreamClient(load_settings(**settings))
        try:
            results = []
            for _ in range(2):
                try:
                    results.append(await client.complete(base, "4242:app-key", b'{"model": "m"}'))
                except UpstreamError as err:
                    results.append(err)
            return results
        finally:
            server.close()

    return uvloop.run(scenario())


def test_a_call_sends_the_key_and_reads_a_compressed_answer_on_one_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    # The proxy is called directly: a proxy variable in the environment (here a dead port) is not used.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    proxy = Proxy()
    first, second = call(proxy, "/v1")
    assert first.data == COMPLETION and second.data == COMPLETION
    request = proxy.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == "Bearer 4242:app-key"
    assert request["content-type"] == "application/json" and request["accept"] == "application/json"
    assert "gzip" in request["accept-encoding"] and request["user-agent"].startswith("llmq python-httpx2/")
    assert proxy.connections == 1, "the answer was read to its end and the connection went back to the pool"


def test_an_error_answer_is_an_upstream_error_and_frees_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    proxy = Proxy()
    first, second = call(proxy, "/busy/v1")
    for error in (first, second):
        assert isinstance(error, UpstreamStatusError)
        assert error.status_code == 429 and error.retry_after_s == 7 and "slow down" in str(error)
    assert proxy.connections == 1


def test_a_proxy_that_does_not_answer_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    first, _ = call(Proxy(), "/hang/v1", read_timeout_s=0.3)
    assert isinstance(first, UpstreamTimeout)
