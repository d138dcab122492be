"""(b) The ceiling: the fastest direct async client calling the mock at the same concurrency, no queue."""

from __future__ import annotations

import json
from typing import Any

from llmq.bench import loadgen
from llmq.bench.jobs import chat_request
from llmq.bench.stack import BENCH_KEY

CLIENTS = ("aiohttp", "httpx2")


def run_ceiling(mock_url: str, n: int, latency_ms: int, concurrency: int) -> dict[str, Any]:
    timeout_s = 120 + 5 * n * latency_ms / 1000 / concurrency
    results = {}
    for client in CLIENTS:
        results[client] = loadgen.run({
            "client": client, "method": "POST", "url": f"{mock_url}/chat/completions",
            "headers": {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"},
            "body": json.dumps(chat_request(0)), "n": n, "concurrency": concurrency, "ok_status": [200],
        }, timeout_s)
        if results[client]["ok"] != n:
            raise RuntimeError(f"ceiling run with {client} had failures: {results[client]}")
    best = max(CLIENTS, key=lambda name: results[name]["rate"])
    return {
        "jobs": n,
        "best_client": best,
        "jobs_per_s": results[best]["rate"],
        "theoretical_jobs_per_s": concurrency / (latency_ms / 1000),
        "clients": {name: {k: results[name][k] for k in ("rate", "elapsed_s", "cpu_util", "latency_p99_ms")}
                    for name in CLIENTS},
    }
