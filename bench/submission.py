"""(d) Submission: one API process, no worker, so the queue just fills. The load generator runs in its own process."""

from __future__ import annotations

import json
from typing import Any

from llmq.bench import loadgen
from llmq.bench.jobs import job_body
from llmq.bench.stack import BENCH_KEY, BenchStack
from llmq.worker.jobs import unfinished

CONNECTIONS = 64
BATCH_SIZE = 1000
BATCH_CONNECTIONS = 2  # one request in the server and one on the way keeps a single process busy
# With three rounds, one slow second could decide the median.
ROUNDS = 5
# The lean client: a general-purpose one (aiohttp) takes most of a core here, CPU the server then lacks.
CLIENT = "raw"
# Each round's requests of each kind, in this many slices taking turns with the other kind.
SLICES = 10
HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}


def _load(stack: BenchStack, method: str, path: str, body: str | None, n: int, concurrency: int,
          ok: int) -> dict[str, Any]:
    assert stack.api is not None
    result = loadgen.run({"client": CLIENT, "method": method, "url": f"{stack.api_url}{path}",
                          "headers": HEADERS, "body": body, "n": n, "concurrency": concurrency,
                          "ok_status": [ok], "server_pid": stack.api.pid}, timeout_s=600)
    _check(result, f"{method} {path}")
    return _combined([result])


def _check(result: dict[str, Any], what: str) -> None:
    if result["ok"] != result["n"]:
        raise RuntimeError(f"{what}: {result['n'] - result['ok']} of {result['n']} failed: {result['statuses']} "
                           f"{result['errors']}")


def _combined(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Loads of one kind (a round's slices, or a single load) as one: their requests over their summed time."""
    elapsed = sum(p["elapsed_s"] for p in phases)
    ok = sum(p["ok"] for p in phases)
    return {"rate": ok / elapsed, "elapsed_s": elapsed,
            "latency_p50_ms": sorted(p["latency_p50_ms"] for p in phases)[len(phases) // 2],
            "latency_p99_ms": max(p["latency_p99_ms"] for p in phases),
            "cpu_util": sum(p["cpu_s"] for p in phases) / elapsed,
            "server_cpu_util": sum(p["server_cpu_s"] for p in phases) / elapsed}


def _round(stack: BenchStack, single_body: str, posts: int,
           health_first: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """`posts` of each kind in alternating slices: both see the same moments of the machine's drifting speed."""
    assert stack.api is not None
    size = -(-posts // SLICES)
    url = stack.api_url
    health: dict[str, Any] = {"method": "GET", "url": f"{url}/healthz", "body": None, "ok_status": [200]}
    single: dict[str, Any] = {"method": "POST", "url": f"{url}/v1/jobs", "body": single_body, "ok_status": [202]}
    pair = [health, single] if health_first else [single, health]
    phases = [{**kind, "n": min(size, posts - i * size)} for i in range(SLICES) for kind in pair]
    result = loadgen.run({"client": CLIENT, "headers": HEADERS, "concurrency": CONNECTIONS,
                          "server_pid": stack.api.pid, "phases": phases}, timeout_s=600)
    done = list(zip(phases, result["phases"], strict=True))
    for phase, outcome in done:
        _check(outcome, f"{phase['method']} {phase['url']}")
    return (_combined([outcome for phase, outcome in done if phase["method"] == "GET"]),
            _combined([outcome for phase, outcome in done if phase["method"] == "POST"]))


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

    # The machine's speed drifts from second to second: the trivial endpoint and the POST take turns in
    # slices, their times summed per round, in several rounds, and the median round is the figure. Which
    # of the two goes first alternates between rounds.
    rounds = []
    for number in range(ROUNDS):
        health, single = _round(stack, single_body, posts, health_first=number % 2 == 0)
        batch = _load(stack, "POST", "/v1/jobs/batch", batch_body, batches, BATCH_CONNECTIONS, 202)
        rounds.append({"healthz": _summary(health), "single_post": _summary(single),
                       "batch": _summary(batch, BATCH_SIZE), "single_vs_healthz": single["rate"] / health["rate"]})
    queued = unfinished.count(stack.redis)
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
        "client": "raw keep-alive HTTP/1.1 (bench.loadgen) on uvloop, separate process",
    }
