"""An httpcore2 network backend on the event loop's own transports, for the upstream pools.

httpcore2 does its socket I/O through anyio streams by default. On asyncio every read and
write then pays for a cancel scope with a loop timer (the timeout), an exception-mapping
context manager, a checkpoint, and on every request start and end a `poll(2)` per idle
connection to learn whether the server closed it. A worker makes hundreds of calls a
second on one loop, so that machinery is a large share of its CPU.

Here a protocol reads into a buffer as data comes: a read takes from the buffer, or waits
on one future with one timer for its timeout; a write hands the bytes to the transport and
waits only when the transport asks it to (flow control); whether an idle connection was
closed by the server is known from the protocol's state, without a system call. Errors come
out as the same httpcore2 exceptions the anyio backend raises, so httpx2 maps them as before.

httpcore2 documents network backends as a public extension point; httpx2's
`AsyncHTTPTransport` does not take one yet, so `http_transport` gives it a pool that uses
this one. httpx2 is adding a backend like this one to the library itself (pydantic/httpx2
pull request 1170); once a release ships it, this module can go.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import Any

import httpcore2
import httpx2

# Reading pauses while this much is buffered and unread (a client that stopped reading a big answer).
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# httpcore2's names for what it asks a stream, and asyncio's for the same on a transport.
_TRANSPORT_INFO = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}


# A network backend must raise httpcore2's own errors (httpx2 maps those to its own, and llmq's one map,
# `llmq.worker.proxy.errors.transport_error`, maps those to llmq's): this is the one place that does it for a
# failed connect or TLS handshake. ssl.SSLError is an OSError.
CONNECT_ERRORS = (TimeoutError, OSError)


def connect_error(err: Exception, what: str) -> httpcore2.ConnectError | httpcore2.ConnectTimeout:
    """httpcore2's error for a failure of `what` (a connection, a TLS handshake); raise it `from err`."""
    if isinstance(err, TimeoutError):
        return httpcore2.ConnectTimeout(f"{what} did not finish in time")
    return httpcore2.ConnectError(str(err) or f"{what} failed: {type(err).__name__}")


class _BufferingProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.at_eof = False
        self.lost = False
        self.error: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self._data_waiter: asyncio.Future[bool] | None = None
        self._drain_waiter: asyncio.Future[bool] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > HIGH_WATER and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> bool:
        self.at_eof = True
        self._wake_reader()
        return False  # close the transport: HTTP/1.1 never half-closes

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._wake_writer()

    def take(self, max_bytes: int) -> bytes:
        chunk = self.chunks.popleft()
        if len(chunk) > max_bytes:
            self.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self.buffered -= len(chunk)
        if self.reading_paused and self.buffered < LOW_WATER and self.transport is not None:
            self.reading_paused = False
            self.transport.resume_reading()
        return chunk

    async def wait_for_data(self, timeout: float | None) -> bool:
        """False when `timeout` passed first."""
        self._data_waiter = waiter = asyncio.get_running_loop().create_future()
        return await _wait(waiter, timeout)

    async def wait_for_drain(self, timeout: float | None) -> bool:
        self._drain_waiter = waiter = asyncio.get_running_loop().create_future()
        return await _wait(waiter, timeout)

    def _wake_reader(self) -> None:
        waiter, self._data_waiter = self._data_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)

    def _wake_writer(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(True)


async def _wait(waiter: asyncio.Future[bool], timeout: float | None) -> bool:
    if timeout is None:
        return await waiter
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, transport: asyncio.Transport, protocol: _BufferingProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        nothing_yet = not (protocol.chunks or protocol.at_eof or protocol.lost)
        if nothing_yet and not await protocol.wait_for_data(timeout):
            raise httpcore2.ReadTimeout("no data from the server in time")
        if protocol.chunks:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore2.ReadError(str(protocol.error) or type(protocol.error).__name__)
        return b""  # the server closed the connection

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or self._transport.is_closing():
            raise httpcore2.WriteError("the connection is closed")
        self._transport.write(buffer)
        if protocol.writing_paused:
            if not await protocol.wait_for_drain(timeout):
                raise httpcore2.WriteTimeout("the server did not take the data in time")
            if protocol.lost:
                raise httpcore2.WriteError("the connection was lost while writing")

    async def aclose(self) -> None:
        if not self._transport.is_closing():
            self._transport.close()
            # The socket is closed on the loop's next turn; let it happen before returning.
            await asyncio.sleep(0)

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except CONNECT_ERRORS as err:
            self._transport.abort()
            raise connect_error(err, "the TLS handshake") from err
        if transport is None:
            raise httpcore2.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport  # type: ignore[assignment]
        return AsyncioStream(transport, self._protocol)  # type: ignore[arg-type]

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle HTTP/1.1 connection that has data or an end is one the server has given up.
            protocol = self._protocol
            return bool(protocol.chunks) or protocol.at_eof or protocol.lost
        name = _TRANSPORT_INFO.get(info)
        return self._transport.get_extra_info(name) if name else None


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        local = (local_address, 0) if local_address else None
        connecting = asyncio.get_running_loop().create_connection(_BufferingProtocol, host, port, local_addr=local)
        return await _connected(connecting, f"{host}:{port}", timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        connecting = asyncio.get_running_loop().create_unix_connection(_BufferingProtocol, path)
        return await _connected(connecting, path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    connecting: Coroutine[Any, Any, tuple[asyncio.Transport, _BufferingProtocol]],
    target: str,
    timeout: float | None,
    socket_options: Iterable[httpcore2.SOCKET_OPTION] | None,
) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            transport, protocol = await connecting
    except CONNECT_ERRORS as err:
        raise connect_error(err, f"the connection to {target}") from err
    for option in socket_options or ():
        transport.get_extra_info("socket").setsockopt(*option)
    return AsyncioStream(transport, protocol)


def http_transport(ssl_context: ssl.SSLContext, limits: httpx2.Limits) -> httpx2.AsyncHTTPTransport:
    """httpx2's transport for `AsyncClient(transport=...)`, its connection pool doing I/O through `AsyncioBackend`."""
    transport = httpx2.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    # httpx2 keeps the httpcore2 pool it sends through here; the test of this module checks that it is used.
    transport._pool = httpcore2.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=AsyncioBackend(),
    )
    return transport
