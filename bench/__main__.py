"""`python -m llmq.bench`: llmq against the direct-client ceiling and a textbook Celery setup, measured in one run.

Prints one table per latency and one for submission and the idle worker; writes the figures to
bench/results/latest.json. Every process runs on loopback with a private Redis and is stopped at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from llmq.bench.breakdown import run_breakdown
from llmq.bench.ceiling import run_ceiling
from llmq.bench.end_to_end import run_end_to_end, run_idle_delay
from llmq.bench.memory import run_memory
from llmq.bench.report import (
    machine,
    print_breakdown,
    print_common,
    print_latency,
    print_machine,
    print_memory,
    write_json,
)
from llmq.bench.stack import LOG_DIR, RESULTS_DIR, BenchStack
from llmq.bench.submission import run_submission
from llmq.bench.typical import run_typical


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary = __doc__.splitlines()[0] if __doc__ else ""
    parser = argparse.ArgumentParser(prog="python -m llmq.bench", description=summary)
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per latency for (a) and (b) (default 5000)")
    parser.add_argument("--latency-ms", default="500,1500", help="mock latencies, comma separated (default 500,1500)")
    parser.add_argument("--concurrency", type=int, default=200, help="worker slots and client concurrency")
    parser.add_argument("--typical-jobs", type=int, default=200, help="cap on jobs for the typical Celery run (c)")
    parser.add_argument("--posts", type=int, default=6000, help="single POSTs (and GET /healthz) per round of (d)")
    parser.add_argument("--batches", type=int, default=10, help="1000-job batch requests for (d)")
    parser.add_argument("--idle-jobs", type=int, default=200, help="jobs submitted one at a time for (e)")
    parser.add_argument("--memory-calls", type=int, default=1000, help="calls held in flight at once for (f) (0: skip)")
    parser.add_argument("--breakdown-jobs", type=int, default=300, help="jobs run under MONITOR (0: skip)")
    parser.add_argument("--quick", action="store_true", help="600 jobs, 500 ms only, 100 typical jobs")
    parser.add_argument("--output", default=str(RESULTS_DIR / "latest.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.latency_ms, args.typical_jobs = 600, "500", 100
    args.latencies = [int(x) for x in args.latency_ms.split(",") if x.strip()]
    return args


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def run_latency(args: argparse.Namespace, latency_ms: int, first: bool, out: dict[str, Any]) -> dict[str, Any]:
    n, c = args.jobs, args.concurrency
    result: dict[str, Any] = {}
    say(f"{latency_ms} ms: (b) ceiling, {n} calls")
    with BenchStack(f"b-{latency_ms}ms", c) as stack:
        result["b"] = run_ceiling(stack.start_mock(latency_ms), n, latency_ms, c)
    say(f"{latency_ms} ms: (a) llmq end to end, {n} jobs")
    with BenchStack(f"a-{latency_ms}ms", c) as stack:
        stack.start_mock(latency_ms)
        stack.start_api()
        stack.start_worker()
        result["a"] = run_end_to_end(stack, n, latency_ms, c)
        if first:
            say(f"(e) idle queue delay, {args.idle_jobs} jobs one at a time")
            out["e"] = run_idle_delay(stack, args.idle_jobs)
            if args.breakdown_jobs:
                say(f"Redis commands by component, {args.breakdown_jobs} jobs under MONITOR")
                out["redis_breakdown"] = run_breakdown(stack, args.breakdown_jobs, timeout_s=300)
    say(f"{latency_ms} ms: (a') llmq on Celery's thread pool, {n} jobs")
    with BenchStack(f"a-threads-{latency_ms}ms", c) as stack:
        stack.start_mock(latency_ms)
        stack.start_api()
        stack.start_worker({**stack.env(), "LLMQ_WORKER_POOL": "threads"})
        result["a_threads"] = run_end_to_end(stack, n, latency_ms, c)
    cores = os.cpu_count() or 1
    say(f"{latency_ms} ms: (a2) llmq with one worker process per core ({cores} x {c // cores} slots), {n} jobs")
    with BenchStack(f"a-per-core-{latency_ms}ms", c) as stack:
        stack.start_mock(latency_ms)
        stack.start_api()
        slots = max(c // cores, 1)
        for i in range(cores):
            stack.start_worker({**stack.env(), "LLMQ_WORKER_CONCURRENCY": str(slots)}, name=f"bench{i + 1}")
        result["a_per_core"] = {**run_end_to_end(stack, n, latency_ms, c), "processes": cores,
                                "slots_per_process": slots}
    typical_n = min(n, args.typical_jobs)
    say(f"{latency_ms} ms: (c) typical Celery, {typical_n} jobs")
    with BenchStack(f"c-{latency_ms}ms", c) as stack:
        stack.start_mock(latency_ms)
        result["c"] = run_typical(stack, typical_n, latency_ms)
    result["a_over_b"] = result["a"]["jobs_per_s"] / result["b"]["jobs_per_s"]
    result["a_over_c"] = result["a"]["jobs_per_s"] / result["c"]["jobs_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shutil.rmtree(LOG_DIR, ignore_errors=True)
    config = {k: v for k, v in vars(args).items() if k not in ("latency_ms", "output")}
    out: dict[str, Any] = {"machine": machine(), "config": config, "latencies": {}}
    print_machine(out["machine"])
    started = time.monotonic()
    try:
        say(f"(d) submission: {args.posts} single POSTs, {args.posts} GET /healthz, {args.batches} batches")
        with BenchStack("d-submission", args.concurrency) as stack:
            stack.start_api()
            out["d"] = run_submission(stack, args.posts, args.batches)
        for i, latency_ms in enumerate(args.latencies):
            out["latencies"][str(latency_ms)] = run_latency(args, latency_ms, i == 0, out)
            print_latency(latency_ms, config, out["latencies"][str(latency_ms)])
        print_common(out["d"], out["e"])
        if args.memory_calls:
            say(f"(f) worker memory with {args.memory_calls} calls in flight at once, asyncio and thread pools")
            out["f"] = run_memory(args.memory_calls)
            print_memory(out["f"])
        if "redis_breakdown" in out:
            print_breakdown(out["redis_breakdown"])
    finally:
        out["duration_s"] = time.monotonic() - started
        write_json(Path(args.output), out)
        say(f"figures written to {args.output}; process logs in {LOG_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
