"""`python -m llmq.bench.openai_route`: what `POST /v1/chat/completions` through llmq adds over calling the
mock proxy directly, measured in one run on one stack (private Redis, mock, API, one worker).

1. Latency added, one call at a time: the same calls alternately to the mock and to llmq (mock at 0 ms).
2. Time to the first streamed chunk added, one call at a time, with the official SDK's async client.
3. 200 calls at once against a 500 ms mock, each side in its own load-generator process: latency added
   (p50, p99) and throughput, llmq over direct.

Figures are ratios and differences within this run; the machine is shared, so absolute numbers move.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import httpx2
from openai import AsyncOpenAI

from llmq.bench import loadgen
from llmq.bench.jobs import chat_request
from llmq.bench.measure import percentile
from llmq.bench.stack import BENCH_KEY, BenchStack

HEADERS = {"Authorization": f"Bearer {BENCH_KEY}", "Content-Type": "application/json"}
TARGETS = {"added_p50_ms_one_at_a_time": 5.0, "added_ttfc_p50_ms": 10.0, "throughput_ratio": 0.8}


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def set_mock_latency(mock_url: str, latency_ms: int) -> None:
    root = mock_url.split("/openai-compatible")[0]
    httpx2.post(f"{root}/_mock/config", json={"latency_ms": latency_ms}, timeout=10).raise_for_status()


def sequential(direct_url: str, llmq_url: str, n: int) -> dict[str, Any]:
    """Alternating calls, one at a time, so both sides see the same moment of a shared machine."""
    body = json.dumps(chat_request(0)).encode()
    times: dict[str, list[float]] = {"direct": [], "llmq": []}
    with httpx2.Client(headers=HEADERS, timeout=30) as client:
        for i in range(n + 20):
            for side, url in (("direct", direct_url), ("llmq", llmq_url)):
                started = time.perf_counter()
                response = client.post(f"{url}/chat/completions", content=body)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise RuntimeError(f"{side} answered {response.status_code}: {response.text[:300]}")
                if i >= 20:  # the first calls warm connections and caches
                    times[side].append(elapsed)
    return summarize(times)


async def _ttfc(direct_url: str, llmq_url: str, n: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"direct": [], "llmq": []}
    clients = {side: AsyncOpenAI(api_key=BENCH_KEY, base_url=url, max_retries=0)
               for side, url in (("direct", direct_url), ("llmq", llmq_url))}
    try:
        for i in range(n + 10):
            for side, client in clients.items():
                started = time.perf_counter()
                stream = await client.chat.completions.create(
                    model="bench-model", messages=[{"role": "user", "content": f"stream {i} please"}], stream=True)
                first: float | None = None
                async for _ in stream:
                    if first is None:
                        first = time.perf_counter() - started
                if i >= 10 and first is not None:
                    times[side].append(first)
    finally:
        for client in clients.values():
            await client.close()
    return times


def time_to_first_chunk(direct_url: str, llmq_url: str, n: int) -> dict[str, Any]:
    return summarize(asyncio.run(_ttfc(direct_url, llmq_url, n)))


def summarize(times: dict[str, list[float]]) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": len(times["llmq"])}
    for q in (50, 99):
        direct, llmq = percentile(times["direct"], q) * 1000, percentile(times["llmq"], q) * 1000
        out[f"direct_p{q}_ms"], out[f"llmq_p{q}_ms"], out[f"added_p{q}_ms"] = direct, llmq, llmq - direct
    return out


def concurrent(direct_url: str, llmq_url: str, n: int, concurrency: int, latency_ms: int) -> dict[str, Any]:
    spec = {"client": "raw", "method": "POST", "headers": HEADERS, "body": json.dumps(chat_request(0)), "n": n,
            "concurrency": concurrency, "ok_status": [200]}
    timeout_s = 120 + 5 * n * latency_ms / 1000 / concurrency
    results = {side: loadgen.run({**spec, "url": f"{url}/chat/completions"}, timeout_s)
               for side, url in (("direct", direct_url), ("llmq", llmq_url))}
    for side, result in results.items():
        if result["ok"] != n:
            raise RuntimeError(f"{side}: {n - result['ok']} calls failed: {result['statuses']} {result['errors']}")
    direct, llmq = results["direct"], results["llmq"]
    return {
        "calls": n, "concurrency": concurrency, "mock_latency_ms": latency_ms,
        "direct_calls_per_s": direct["rate"], "llmq_calls_per_s": llmq["rate"],
        "throughput_ratio": llmq["rate"] / direct["rate"],
        **{f"{side}_p{q}_ms": results[side][f"latency_p{q}_ms"] for side in results for q in (50, 99)},
        "added_p50_ms": llmq["latency_p50_ms"] - direct["latency_p50_ms"],
        "added_p99_ms": llmq["latency_p99_ms"] - direct["latency_p99_ms"],
        "loadgen_cpu_util": {side: results[side]["cpu_util"] for side in results},
    }


def report(out: dict[str, Any]) -> None:
    seq, ttfc, conc = out["one_at_a_time"], out["first_chunk"], out["concurrent"]
    rows = [
        ("one at a time, 0 ms mock", seq, "added_p50_ms", TARGETS["added_p50_ms_one_at_a_time"]),
        ("time to first chunk (SDK)", ttfc, "added_p50_ms", TARGETS["added_ttfc_p50_ms"]),
    ]
    print(f"{'':34} {'direct p50':>11} {'llmq p50':>9} {'added p50':>10} {'added p99':>10}  target")
    for name, row, key, target in rows:
        verdict = "met" if row[key] <= target else "MISSED"
        print(f"{name:34} {row['direct_p50_ms']:9.2f}ms {row['llmq_p50_ms']:7.2f}ms {row['added_p50_ms']:8.2f}ms "
              f"{row['added_p99_ms']:8.2f}ms  ≤ {target:g} ms p50: {verdict}")
    print(f"{conc['concurrency']} at once, {conc['mock_latency_ms']} ms mock{'':9} {conc['direct_p50_ms']:9.2f}ms "
          f"{conc['llmq_p50_ms']:7.2f}ms {conc['added_p50_ms']:8.2f}ms {conc['added_p99_ms']:8.2f}ms")
    verdict = "met" if conc["throughput_ratio"] >= TARGETS["throughput_ratio"] else "MISSED"
    print(f"throughput, {conc['calls']} calls: direct {conc['direct_calls_per_s']:.1f}/s, llmq "
          f"{conc['llmq_calls_per_s']:.1f}/s, ratio {conc['throughput_ratio']:.3f} "
          f"(≥ {TARGETS['throughput_ratio']:g}: {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.openai_route", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300, help="calls one at a time, per side (default 300)")
    parser.add_argument("--stream-calls", type=int, default=200, help="streamed calls per side (default 200)")
    parser.add_argument("--concurrent-calls", type=int, default=4000, help="calls at 200 at once (default 4000)")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=500, help="mock latency of the concurrent run")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {}
    with BenchStack("openai-route", args.concurrency) as stack:
        direct_url = stack.start_mock(0)
        llmq_url = f"{stack.start_api()}/v1"
        stack.start_worker()
        say(f"one at a time: {args.calls} calls each side")
        out["one_at_a_time"] = sequential(direct_url, llmq_url, args.calls)
        say(f"time to first chunk: {args.stream_calls} streamed calls each side")
        out["first_chunk"] = time_to_first_chunk(direct_url, llmq_url, args.stream_calls)
        set_mock_latency(direct_url, args.latency_ms)
        say(f"{args.concurrency} at once: {args.concurrent_calls} calls each side, {args.latency_ms} ms mock")
        out["concurrent"] = concurrent(direct_url, llmq_url, args.concurrent_calls, args.concurrency,
                                       args.latency_ms)
    report(out)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
