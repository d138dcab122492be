"""An HTTP load generator meant to run in its own process, so its CPU never hides inside the server's figures.

`python -m llmq.bench.loadgen '<json spec>'` prints one JSON line: counts, elapsed time, rate and its own CPU use.
Spec: client (raw | aiohttp | httpx2), method, url, headers, body (text or null), n, concurrency, ok_status;
optionally server_pid, whose CPU time is then reported too, and phases: a list of partial specs run one after
the other in this process (each with its own connections), reported one by one under "phases".

`raw` is what wrk and h2load are to C servers: one keep-alive HTTP/1.1 connection per lane, the request encoded
once, the answer read by its Content-Length; plain http only. About 30 µs of CPU per request, where aiohttp's
client spends about 130: on a two-core machine, a general-purpose client takes most of the core the server
would use.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from llmq.bench.measure import percentile

Send = Callable[[], Awaitable[int]]
ROOT = Path(__file__).resolve().parent.parent


async def _drive(send: Send, n: int, concurrency: int, ok_status: set[int]) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    remaining = n

    async def lane() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            try:
                statuses[await send()] += 1
            except Exception as err:  # every failure is counted, none stops the run
                errors[type(err).__name__] += 1
            latencies.append(time.perf_counter() - started)

    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(min(concurrency, n))))
    elapsed = time.perf_counter() - started
    cpu_s = sum(me.cpu_times()[:2]) - cpu_before
    ok = sum(count for status, count in statuses.items() if status in ok_status)
    return {
        "n": n, "ok": ok, "statuses": {str(k): v for k, v in statuses.items()}, "errors": dict(errors),
        "elapsed_s": elapsed, "rate": ok / elapsed if elapsed else 0.0,
        "latency_p50_ms": percentile(latencies, 50) * 1000, "latency_p99_ms": percentile(latencies, 99) * 1000,
        # Near 1.0 means the generator used a whole core: it, not the server, may be the limit.
        "cpu_s": cpu_s, "cpu_util": cpu_s / elapsed if elapsed else 0.0,
    }


async def _with_aiohttp(spec: dict[str, Any]) -> dict[str, Any]:
    import aiohttp

    body = spec["body"].encode() if spec.get("body") is not None else None
    connector = aiohttp.TCPConnector(limit=spec["concurrency"], limit_per_host=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.get("timeout_s", 120))
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send() -> int:
            async with session.request(spec["method"], spec["url"], data=body, headers=spec["headers"]) as resp:
                await resp.read()
                return resp.status

        return await _drive(send, spec["n"], spec["concurrency"], set(spec["ok_status"]))


async def _with_httpx2(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx2

    body = spec["body"].encode() if spec.get("body") is not None else None
    limits = httpx2.Limits(max_connections=spec["concurrency"], max_keepalive_connections=spec["concurrency"])
    async with httpx2.AsyncClient(limits=limits, timeout=spec.get("timeout_s", 120)) as client:

        async def send() -> int:
            resp = await client.request(spec["method"], spec["url"], content=body, headers=spec["headers"])
            return resp.status_code

        return await _drive(send, spec["n"], spec["concurrency"], set(spec["ok_status"]))


class _RawConnection(asyncio.Protocol):
    """One keep-alive connection that sends a prepared request and waits for one whole answer at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.answer: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.answer is None or self.answer.done():
            return
        head = bytes(self.buffer[:end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            self.answer.set_exception(RuntimeError("answer without Content-Length: use the aiohttp client"))
            return
        line_end = head.find(b"\r\n", at + 2)
        length = int(head[at + 17:line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[:end + 4 + length]
        self.answer.set_result(int(head[9:12]))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(ConnectionError("the server closed the connection"))

    async def exchange(self, request: bytes) -> int:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.answer


async def _with_raw(spec: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(spec["url"])
    body = spec["body"].encode() if spec.get("body") is not None else b""
    lines = [f"{spec['method']} {url.path or '/'}{'?' + url.query if url.query else ''} HTTP/1.1",
             f"Host: {url.netloc}", *(f"{k}: {v}" for k, v in spec["headers"].items()),
             f"Content-Length: {len(body)}"]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    lanes = min(spec["concurrency"], spec["n"])
    idle = [(await loop.create_connection(_RawConnection, url.hostname, url.port))[1] for _ in range(lanes)]

    async def send() -> int:
        connection = idle.pop()  # as many connections as lanes: one is always free
        try:
            return await connection.exchange(request)
        finally:
            idle.append(connection)

    try:
        return await _drive(send, spec["n"], spec["concurrency"], set(spec["ok_status"]))
    finally:
        for connection in idle:
            if connection.transport is not None:
                connection.transport.close()


CLIENTS = {"raw": _with_raw, "aiohttp": _with_aiohttp, "httpx2": _with_httpx2}


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def _phase(spec: dict[str, Any]) -> dict[str, Any]:
    server = psutil.Process(spec["server_pid"]) if spec.get("server_pid") else None
    server_before = sum(server.cpu_times()[:2]) if server else 0.0
    result = await CLIENTS[spec["client"]](spec)
    if server:
        result["server_cpu_s"] = sum(server.cpu_times()[:2]) - server_before
    return result


async def _run(spec: dict[str, Any]) -> dict[str, Any]:
    phases = spec.pop("phases", None)
    if phases is None:
        return await _phase(spec)
    return {"phases": [await _phase({**spec, **phase}) for phase in phases]}


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        result = runner.run(_run(spec))
    result["client"] = spec["client"]
    print(json.dumps(result), flush=True)


def run(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Run one load in a fresh process; its JSON result."""
    done = subprocess.run([sys.executable, "-m", "llmq.bench.loadgen", json.dumps(spec)], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout_s, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


if __name__ == "__main__":
    main(sys.argv[1:])
