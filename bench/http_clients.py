"""HTTP clients against a loopback mock answering in 0.5 s: 1,000 calls, 200 at a time (ceiling 400 calls/s).

`python -m llmq.bench.http_clients [--calls 1000] [--concurrency 200] [--latency-ms 500]`

Each client runs in a fresh process of its own, one after the other, against the same mock. httpx rows
appear only when httpx is installed; "default" rows use each library's default pool limits, the others
a pool as large as the concurrency, HTTP/1.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from importlib.util import find_spec
from typing import Any

import psutil

from llmq.bench.jobs import chat_request
from llmq.bench.stack import BENCH_KEY, LOG_DIR, ROOT
from llmq.devstack.processes import mock_process
from llmq.devstack.redis_server import free_port

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
BODY = json.dumps(chat_request(0)).encode()


def _async_run(make_client: Callable[[], Any], url: str, calls: int, concurrency: int) -> None:
    async def main() -> None:
        async with make_client() as client:
            remaining = calls

            async def lane() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    response = await client.post(url, content=BODY, headers=HEADERS)
                    response.raise_for_status()

            await asyncio.gather(*(lane() for _ in range(concurrency)))

    asyncio.run(main())


def _threads_run(make_client: Callable[[], Any], url: str, calls: int, concurrency: int) -> None:
    with make_client() as client, ThreadPoolExecutor(concurrency) as pool:

        def one(_: int) -> None:
            client.post(url, content=BODY, headers=HEADERS).raise_for_status()

        list(pool.map(one, range(calls)))


def _aiohttp_run(url: str, calls: int, concurrency: int) -> None:
    import aiohttp

    async def main() -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            remaining = calls

            async def lane() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    async with session.post(url, data=BODY, headers=HEADERS) as response:
                        response.raise_for_status()
                        await response.read()

            await asyncio.gather(*(lane() for _ in range(concurrency)))

    asyncio.run(main())


def _limits(module: Any, concurrency: int) -> Any:
    return module.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


def run_one(name: str, url: str, calls: int, concurrency: int) -> None:
    """Body of the child process: one client, one run, one JSON line."""
    family, _, mode = name.partition(" ")
    if family == "aiohttp":
        work: Callable[[], None] = lambda: _aiohttp_run(url, calls, concurrency)  # noqa: E731
    else:
        module: Any = __import__(family)
        tuned = not mode.endswith("default")
        options: dict[str, Any] = {"timeout": 60.0, "http2": False} if family == "httpx" else {"timeout": 60.0}
        if tuned:
            options["limits"] = _limits(module, concurrency)
        if mode.startswith("AsyncClient"):
            work = lambda: _async_run(lambda: module.AsyncClient(**options), url, calls, concurrency)  # noqa: E731
        else:
            work = lambda: _threads_run(lambda: module.Client(**options), url, calls, concurrency)  # noqa: E731
    me = psutil.Process()
    cpu_before = sum(me.cpu_times()[:2])
    started = time.perf_counter()
    work()
    elapsed = time.perf_counter() - started
    cpu = sum(me.cpu_times()[:2]) - cpu_before
    print(json.dumps({"name": name, "calls_per_s": calls / elapsed, "elapsed_s": elapsed, "cpu_s": cpu}))


def client_names() -> list[str]:
    names = ["httpx2 AsyncClient", "httpx2 Client, threads", "aiohttp ClientSession",
             "httpx2 AsyncClient default", "httpx2 Client, threads default"]
    if find_spec("httpx") is not None:
        names += ["httpx AsyncClient", "httpx Client, threads", "httpx AsyncClient default",
                  "httpx Client, threads default"]
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.http_clients", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run this client in this process
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        run_one(args.one, args.url, args.calls, args.concurrency)
        return 0

    port = free_port()
    mock = mock_process({**os.environ}, port, LOG_DIR / "http-clients-mock.log", "--latency-ms", str(args.latency_ms))
    versions = {name: _version(name) for name in ("httpx2", "httpx", "httpcore", "aiohttp")}
    print(f"{args.calls} calls, {args.concurrency} at a time, mock latency {args.latency_ms} ms"
          f" (ceiling {args.concurrency / args.latency_ms * 1000:.0f} calls/s); {versions}")
    try:
        mock.start().wait_for_log("mock proxy listening")
        url = f"http://127.0.0.1:{port}/openai-compatible/v1/chat/completions"
        print(f"  {'client':<36}{'calls/s':>9}{'CPU s':>8}")
        for name in client_names():
            child = [sys.executable, "-m", "llmq.bench.http_clients", "--one", name, "--url", url,
                     "--calls", str(args.calls), "--concurrency", str(args.concurrency)]
            done = subprocess.run(child, capture_output=True, text=True, cwd=ROOT, timeout=600, check=False)
            if done.returncode != 0:
                print(f"  {name:<36}failed: {done.stderr.strip().splitlines()[-1:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"  {name:<36}{row['calls_per_s']:>9.1f}{row['cpu_s']:>8.2f}", flush=True)
    finally:
        mock.stop()
    return 0


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
