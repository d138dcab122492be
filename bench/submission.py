"""(d) Submission: one API process, no worker, so the queue just fills. The load generator runs in its own process."""

from __future__ import annotations

import json
from typing import Any

from bench import loadgen
from bench.jobs import job_body
from bench.measure import cpu_seconds
from bench.stack import BENCH_KEY, BenchStack
from worker import keys

CONNECTIONS = 64
BATCH_SIZE = 1000
BATCH_CONNECTIONS = 2  # one request in the server and one on the way keeps a single process busy
# With three rounds, one slow second could decide the median.
ROUNDS = 5
HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}


def _load(stack: BenchStack, method: str, path: str, body: str | None, n: int, concurrency: int,
          ok: int) -> dict[str, Any]:
    assert stack.api is not None
    cpu_before = cpu_seconds(stack.api.pid)
    result = loadgen.run({"client": "aiohttp", "method": method, "url": f"{stack.api_url}{path}",
                          "headers": HEADERS, "body": body, "n": n, "concurrency": concurrency,
                          "ok_status": [ok]}, timeout_s=600)
    if result["ok"] != n:
        raise RuntimeError(f"{method} {path}: {n - result['ok']} of {n} failed: {result['statuses']} "
                           f"{result['errors']}")
    result["server_cpu_util"] = (cpu_seconds(stack.api.pid) - cpu_before) / result["elapsed_s"]
    return result


def _summary(result: dict[str, Any], per_request: int = 1) -> dict[str, Any]:
    return {"per_s": result["rate"] * per_request, "requests_per_s": result["rate"],
            "p50_ms": result["latency_p50_ms"], "p99_ms": result["latency_p99_ms"],
            "server_cpu_util": result["server_cpu_util"], "client_cpu_util": result["cpu_util"]}


def run_submission(stack: BenchStack, posts: int, batches: int) -> dict[str, Any]:
    assert stack.redis is not None
    single_body = json.dumps(job_body(0))
    batch_body = json.dumps({"jobs": [job_body(i) for i in range(BATCH_SIZE)]})
    # Warm-up: first requests pay for imports, pools and the broker connection.
    _load(stack, "POST", "/v1/jobs", single_body, 100, CONNECTIONS, 202)
    _load(stack, "GET", "/healthz", None, 100, CONNECTIONS, 200)
    _load(stack, "POST", "/v1/jobs/batch", batch_body, 1, 1, 202)

    # The machine's speed drifts from minute to minute: the trivial endpoint and the POST are measured
    # back to back, in several rounds, and the median round is the figure. Which of the two goes first
    # alternates, so a machine slowing down (or speeding up) through the run does not favour one of them.
    rounds = []
    for number in range(ROUNDS):
        if number % 2 == 0:
            health = _load(stack, "GET", "/healthz", None, posts, CONNECTIONS, 200)
            single = _load(stack, "POST", "/v1/jobs", single_body, posts, CONNECTIONS, 202)
        else:
            single = _load(stack, "POST", "/v1/jobs", single_body, posts, CONNECTIONS, 202)
            health = _load(stack, "GET", "/healthz", None, posts, CONNECTIONS, 200)
        batch = _load(stack, "POST", "/v1/jobs/batch", batch_body, batches, BATCH_CONNECTIONS, 202)
        rounds.append({"healthz": _summary(health), "single_post": _summary(single),
                       "batch": _summary(batch, BATCH_SIZE), "single_vs_healthz": single["rate"] / health["rate"]})
    queued = stack.redis.zcard(keys.ACTIVE_JOBS)
    expected = 100 + BATCH_SIZE + ROUNDS * (posts + batches * BATCH_SIZE)
    if queued != expected:
        raise RuntimeError(f"{queued} jobs recorded, expected {expected}")
    by_ratio = sorted(rounds, key=lambda r: r["single_vs_healthz"])
    by_batch = sorted(rounds, key=lambda r: r["batch"]["per_s"])
    middle = by_ratio[len(rounds) // 2]
    return {
        "connections": CONNECTIONS,
        "rounds": rounds,
        "healthz": middle["healthz"],
        "single_post": middle["single_post"],
        "batch": {**by_batch[len(rounds) // 2]["batch"], "jobs_per_request": BATCH_SIZE, "requests": batches,
                  "connections": BATCH_CONNECTIONS},
        "single_vs_healthz": middle["single_vs_healthz"],
        "client": "aiohttp on uvloop, separate process",
    }
