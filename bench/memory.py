"""(f) Worker memory with 1,000 calls in flight at once, on the asyncio pool and on Celery's thread pool.

(a) measures memory at its own concurrency (200) and scales the growth to 1,000 calls, which also scales
what a worker allocates once as load first arrives (connection pools, code paths not yet taken). Here a
worker with as many slots as calls holds all of them at the same moment: the mock answers only after
`MEMORY_LATENCY_MS`, long enough for every call to start first even on a slow machine.
"""

from __future__ import annotations

from typing import Any

from llmq.bench.end_to_end import run_end_to_end
from llmq.bench.stack import BenchStack

MEMORY_LATENCY_MS = 10_000
POOLS = ("asyncio", "threads")


def run_memory(calls: int) -> dict[str, Any]:
    results: dict[str, Any] = {"calls": calls, "latency_ms": MEMORY_LATENCY_MS}
    for pool in POOLS:
        with BenchStack(f"f-memory-{pool}", calls) as stack:
            stack.start_mock(MEMORY_LATENCY_MS)
            stack.start_api()
            stack.start_worker({**stack.env(), "LLMQ_WORKER_POOL": pool})
            results[pool] = run_end_to_end(stack, calls, MEMORY_LATENCY_MS, calls)
    return results
