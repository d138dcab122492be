"""`python -m llmq.bench.fairness`: a small app's jobs behind another app's flood (docs/fairness.md).

App A submits `--flood` one-second jobs in one batch to a worker with `--slots` slots; `--late-s` later app B
submits `--small` jobs one POST at a time. B's wait is the time from its POST to the mock proxy's start of its call
(the mock's call log); A's throughput is its jobs over the time from its batch to its last call's start plus one
call. Runs on loopback with a private Redis, mock proxy, API and worker, all stopped at the end.

Runs the scenario twice: first in, first out (LLMQ_FAIR_TURNS=false), then with fair turns; prints both and A's
throughput with fair turns over A's first-in first-out throughput.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import httpx2

from llmq.bench.stack import BenchStack
from llmq.worker.jobs import unfinished

FLOOD_KEY = "1111:bench-flooding-app"
SMALL_KEY = "2222:bench-small-app"
MODEL = "bench-fairness"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def run(
    flood: int, small: int, slots: int, late_s: float, latency_ms: int, fair: bool, direct_jobs: int
) -> dict[str, Any]:
    with BenchStack("fairness-fair" if fair else "fairness-fifo", concurrency=slots) as stack:
        stack.start_mock(latency_ms)
        env = {**stack.env(), "LLMQ_FAIR_TURNS": "true" if fair else "false",
               "LLMQ_FAIR_DIRECT_JOBS": str(direct_jobs)}
        api = stack.start_api(env)
        stack.start_worker(env)
        assert stack.redis is not None
        mock_admin = httpx2.Client(base_url=stack.mock_url.split("/openai-compatible")[0], timeout=30)
        with httpx2.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {FLOOD_KEY}"}) as a, \
                httpx2.Client(base_url=api, timeout=60, headers={"Authorization": f"Bearer {SMALL_KEY}"}) as b:
            chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
            flood_at = time.time()
            response = a.post("/v1/jobs/batch", json={"jobs": [{"request": chat}] * flood})
            assert response.status_code == 202 and response.json()["accepted"] == flood, response.text
            time.sleep(max(0.0, flood_at + late_s - time.time()))
            submitted: list[float] = []
            for _ in range(small):
                submitted.append(time.time())
                assert b.post("/v1/jobs", json={"request": chat}).status_code == 202
            deadline = time.monotonic() + flood * latency_ms / 1000 / slots * 3 + 60
            while unfinished.count(stack.redis) and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not unfinished.count(stack.redis), "jobs still unfinished at the end"
        calls = mock_admin.get("/_mock/calls", params={"model": MODEL}).json()["calls"]
        mock_admin.close()
    started = {app: sorted(c["at"] for c in calls if c["app_id"] == app) for app in ("1111", "2222")}
    assert len(started["2222"]) == small and len(started["1111"]) >= flood, "calls missing from the mock's log"
    waits = [start - sent for start, sent in zip(started["2222"], sorted(submitted), strict=True)]
    flood_span_s = started["1111"][-1] + latency_ms / 1000 - flood_at
    return {"small_wait_p50_s": statistics.median(waits), "small_wait_p99_s": percentile(waits, 0.99),
            "flood_jobs_per_s": flood / flood_span_s, "flood_span_s": flood_span_s,
            "ideal_flood_jobs_per_s": slots / (latency_ms / 1000)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.fairness", description=__doc__.splitlines()[0])
    parser.add_argument("--flood", type=int, default=1000, help="app A's jobs, one batch (default 1000)")
    parser.add_argument("--small", type=int, default=5, help="app B's jobs (default 5)")
    parser.add_argument("--slots", type=int, default=20, help="the worker's slots (default 20)")
    parser.add_argument("--late-s", type=float, default=2.0, help="how long after A's batch B submits (default 2)")
    parser.add_argument("--latency-ms", type=int, default=1000, help="the mock proxy's call time (default 1000)")
    parser.add_argument("--direct-jobs", type=int, default=4,
                        help="LLMQ_FAIR_DIRECT_JOBS (default 4; 0 sends B's jobs through the ready lists too)")
    args = parser.parse_args(argv)
    runs = {name: run(args.flood, args.small, args.slots, args.late_s, args.latency_ms, fair, args.direct_jobs)
            for name, fair in (("first in, first out", False), ("fair turns", True))}
    for name, figures in runs.items():
        print(f"{name}: B's wait p50 {figures['small_wait_p50_s']:.2f} s, p99 {figures['small_wait_p99_s']:.2f} s; "
              f"A {figures['flood_jobs_per_s']:.2f} jobs/s over {figures['flood_span_s']:.1f} s "
              f"(at most {figures['ideal_flood_jobs_per_s']:.0f} jobs/s)")
    fifo, fair = runs.values()
    print(f"A's throughput with fair turns / first in, first out: "
          f"{fair['flood_jobs_per_s'] / fifo['flood_jobs_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
