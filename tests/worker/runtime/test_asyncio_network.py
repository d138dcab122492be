"""The upstream pools' network backend, through httpx2, against real servers on loopback (plain and TLS)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpcore2
import httpx2
import pytest
import trustme
import uvloop

from llmq.worker.runtime.asyncio_network import (
    CONNECT_ERRORS,
    HIGH_WATER,
    AsyncioStream,
    connect_error,
    http_transport,
)

LIMITS = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coroutine: Awaitable[Any]) -> Any:
    """On uvloop, the worker's loop."""
    return uvloop.run(coroutine)  # type: ignore[arg-type]


async def read_request(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    length = next((int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    return lines[0].split(" ")[1], await reader.readexactly(length)


def answer(body: bytes, status: str = "200 OK") -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


async def until(condition: Callable[[], object], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


class Server:
    """An HTTP/1.1 server that answers by path, and counts the connections it accepted."""

    def __init__(self) -> None:
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                path, body = await read_request(reader)
                if path == "/echo":
                    writer.write(answer(body))
                elif path == "/close-after":  # answers, then drops the keep-alive connection
                    writer.write(answer(b"bye"))
                    await writer.drain()
                    break
                elif path == "/cut":  # promises 100 bytes, sends 10, goes away
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
                    await writer.drain()
                    break
                elif path == "/hang":  # until the client gives up
                    await reader.read()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@asynccontextmanager
async def serving(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        server.close()


def client(tls: ssl.SSLContext | None = None, timeout: float = 5.0) -> httpx2.AsyncClient:
    tls = tls or httpx2.create_ssl_context()
    return httpx2.AsyncClient(transport=http_transport(tls, LIMITS), timeout=timeout)


def test_requests_go_through_the_backend_and_reuse_the_connection() -> None:
    server = Server()

    async def scenario() -> None:
        async with serving(server.handle) as url, client() as http:
            for i in range(3):
                response = await http.post(f"{url}/echo", content=f"hello {i}".encode())
                assert response.status_code == 200 and response.content == f"hello {i}".encode()
                stream = response.extensions["network_stream"]
                assert isinstance(stream, AsyncioStream)
                assert stream.get_extra_info("server_addr")[1] == int(url.rsplit(":", 1)[1])
                assert stream.get_extra_info("ssl_object") is None and stream.get_extra_info("is_readable") is False

    run(scenario())
    assert server.connections == 1, "keep-alive: one connection for three requests"


def test_a_body_larger_than_the_buffer_limit_goes_both_ways_intact() -> None:
    body = bytes(range(256)) * (4 * HIGH_WATER // 256)  # 1 MiB: reading pauses and resumes on the way

    async def scenario() -> bytes:
        async with serving(Server().handle) as url, client() as http:
            return (await http.post(f"{url}/echo", content=body)).content

    assert run(scenario()) == body


def test_an_idle_connection_the_server_closed_is_replaced_not_used() -> None:
    server = Server()

    async def scenario() -> None:
        async with serving(server.handle) as url, client() as http:
            response = await http.post(f"{url}/close-after")
            assert response.content == b"bye"
            # The server's close reaches the idle connection's protocol on a later turn of the loop.
            stream = response.extensions["network_stream"]
            await until(lambda: stream.get_extra_info("is_readable"), timeout_s=5)
            assert (await http.post(f"{url}/echo", content=b"again")).content == b"again"

    run(scenario())
    assert server.connections == 2


def test_a_server_that_does_not_answer_times_out() -> None:
    async def scenario() -> None:
        async with serving(Server().handle) as url, client(timeout=0.3) as http:
            await http.post(f"{url}/hang")

    with pytest.raises(httpx2.ReadTimeout):
        run(scenario())


def test_an_answer_cut_short_is_a_transport_error() -> None:
    async def scenario() -> None:
        async with serving(Server().handle) as url, client() as http:
            await http.post(f"{url}/cut")

    with pytest.raises(httpx2.TransportError):
        run(scenario())


def test_nobody_listening_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with serving(Server().handle) as url:
            pass  # closed again: the port is free now
        async with client() as http:
            await http.post(f"{url}/echo")

    with pytest.raises(httpx2.ConnectError):
        run(scenario())


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


def test_tls_to_a_server_the_client_trusts(ca: trustme.CA) -> None:
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)

    async def scenario() -> None:
        async with serving(Server().handle, server_tls(ca)) as url, client(trusting) as http:
            response = await http.post(f"{url}/echo", content=b"secret")
            assert response.content == b"secret"
            assert response.extensions["network_stream"].get_extra_info("ssl_object") is not None

    run(scenario())


def test_tls_to_a_server_with_an_unknown_certificate_fails_to_connect(ca: trustme.CA) -> None:
    async def scenario() -> None:
        async with serving(Server().handle, server_tls(ca)) as url, client(ssl.create_default_context()) as http:
            await http.post(f"{url}/echo")

    with pytest.raises(httpx2.ConnectError):
        run(scenario())


def test_a_tls_handshake_that_never_comes_is_a_connect_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accepts the TCP connection, never answers the ClientHello, until the client gives up
        writer.close()

    async def scenario() -> None:
        async with serving(silent) as url, client(timeout=0.3) as http:
            await http.post(url.replace("http://", "https://") + "/echo")

    with pytest.raises(httpx2.ConnectTimeout):
        run(scenario())


@pytest.mark.parametrize(("err", "expected", "message"), [
    (TimeoutError(), httpcore2.ConnectTimeout, "the TLS handshake did not finish in time"),
    (ConnectionRefusedError(111, "Connection refused"), httpcore2.ConnectError, "[Errno 111] Connection refused"),
    (ssl.SSLCertVerificationError(1, "certificate verify failed"), httpcore2.ConnectError,
     "certificate verify failed"),
    (OSError(), httpcore2.ConnectError, "the TLS handshake failed: OSError"),
])
def test_a_failed_connect_is_httpcores_error(err: Exception, expected: type[Exception], message: str) -> None:
    assert isinstance(err, CONNECT_ERRORS)
    mapped = connect_error(err, "the TLS handshake")
    assert type(mapped) is expected and str(mapped) == message
