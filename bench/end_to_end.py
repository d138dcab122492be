"""(a) llmq end to end and (e) queue delay of an idle worker, on a running BenchStack."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any, cast

import httpx2

from llmq.bench.jobs import JobTimes, job_body, peak_in_flight, read_times, rss_at_full_load
from llmq.bench.measure import CommandStats, RssSampler, cpu_seconds, percentile, rss_bytes, wait_for
from llmq.bench.stack import BENCH_KEY, BenchStack
from llmq.worker import redis_keys
from llmq.worker.runtime.redis_transport import UNACKED_KEY

BATCH_SIZE = 1000  # the API's limit per batch request
WARM_UP_JOBS = 20
POLL_S = 0.1


def api_client(stack: BenchStack) -> httpx2.Client:
    return httpx2.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {BENCH_KEY}"}, timeout=120)


def submit_batches(client: httpx2.Client, first: int, count: int) -> list[str]:
    ids: list[str] = []
    for offset in range(first, first + count, BATCH_SIZE):
        size = min(BATCH_SIZE, first + count - offset)
        response = client.post("/v1/jobs/batch", json={"jobs": [job_body(offset + i) for i in range(size)]})
        response.raise_for_status()
        body = response.json()
        if body["accepted"] != size:
            raise RuntimeError(f"batch refused {body['rejected']} jobs: {body['jobs'][:3]}")
        ids.extend(item["id"] for item in body["jobs"])
    return ids


class Drain:
    """Waits until every job is finished and acknowledged, counting its own Redis commands to subtract them."""

    def __init__(self, stack: BenchStack) -> None:
        assert stack.redis is not None
        self.redis = stack.redis
        self.own: Counter[str] = Counter()

    def done(self) -> bool:
        partitions = cast(list[str], self.redis.zrange(redis_keys.UNFINISHED_PARTITIONS, 0, -1))
        self.own["zrange"] += 1
        self.own["zcard"] += len(partitions)
        if sum(cast(int, self.redis.zcard(partition)) for partition in partitions):
            return False
        self.own["zcard"] += 1
        return not self.redis.zcard(UNACKED_KEY)

    def wait(self, timeout_s: float) -> None:
        wait_for(self.done, timeout_s, POLL_S, "all jobs finished and acknowledged")


def commands_of_run(before: CommandStats, after: CommandStats, own: Counter[str]) -> CommandStats:
    """The run's Redis commands without the benchmark's own polling and INFO calls."""
    diff = after.minus(before)
    calls = dict(diff.calls)
    own = own + Counter({"info": 1})
    for name, count in own.items():
        if name in calls:
            calls[name] -= count
    return CommandStats({k: v for k, v in calls.items() if v > 0}, diff.usec)


def check_finished(times: list[JobTimes], expected: int) -> None:
    statuses = Counter(t.status for t in times)
    if statuses.get("succeeded", 0) != expected:
        raise RuntimeError(f"not every job succeeded: {dict(statuses)}")


def warm_up(stack: BenchStack, count: int) -> None:
    """A few jobs first, so "idle" is a worker that has served traffic, not one still loading code paths."""
    with api_client(stack) as client:
        submit_batches(client, 10**9, count)
    Drain(stack).wait(60)


def run_end_to_end(stack: BenchStack, n: int, latency_ms: int, concurrency: int) -> dict[str, Any]:
    assert stack.workers and stack.redis is not None
    # With several worker processes, memory and CPU are their sums.
    pids = [worker.pid for worker in stack.workers]
    warm_up(stack, WARM_UP_JOBS)
    time.sleep(1.0)  # let the worker settle before taking the idle figures
    idle_rss = rss_bytes(pids)
    cpu_before = cpu_seconds(pids)
    stats_before = CommandStats.read(stack.redis)
    drain = Drain(stack)
    # Ideal time plus generous room for a loaded machine.
    timeout_s = 120 + 5 * n * latency_ms / 1000 / concurrency
    with RssSampler(pids) as sampler, api_client(stack) as client:
        started = time.time()
        ids = submit_batches(client, 0, n)
        submitted = time.time()
        drain.wait(timeout_s)
    cpu_used = cpu_seconds(pids) - cpu_before
    stats = commands_of_run(stats_before, CommandStats.read(stack.redis), drain.own)

    times = read_times(stack.redis, ids)
    check_finished(times, n)
    last_finished = max(t.finished for t in times)
    elapsed = last_finished - started
    delays = [t.queue_delay_s * 1000 for t in times]
    calls = [(t.call_end - t.started) * 1000 for t in times]
    after_call = [(t.finished - t.call_end) * 1000 for t in times]
    peak, _ = peak_in_flight(times)
    # Mean calls in flight over the run: below C means slots sat idle or were busy with more than the call.
    mean_in_flight = sum(calls) / 1000 / elapsed
    full_rss, full_in_flight = rss_at_full_load(times, sampler.samples)
    return {
        "jobs": n,
        "submission": "POST /v1/jobs/batch, 1000 jobs per request, one client, while the worker runs",
        "submit_s": submitted - started,
        "elapsed_s": elapsed,
        "jobs_per_s": n / elapsed,
        "queue_delay_p50_ms": percentile(delays, 50),
        "queue_delay_p99_ms": percentile(delays, 99),
        "call_ms_p50": percentile(calls, 50),
        "call_ms_p99": percentile(calls, 99),
        "after_call_ms_p50": percentile(after_call, 50),
        "after_call_ms_p99": percentile(after_call, 99),
        "in_flight_mean": mean_in_flight,
        "in_flight_peak": peak,
        "in_flight_at_full_load_sample": full_in_flight,
        "worker_idle_rss_mb": idle_rss / 2**20,
        "worker_full_load_rss_mb": full_rss / 2**20,
        "worker_peak_rss_mb": sampler.peak / 2**20,
        "rss_per_1000_in_flight_mb": (full_rss - idle_rss) / max(full_in_flight, 1) * 1000 / 2**20,
        "worker_cpu_s_per_1000_jobs": cpu_used / n * 1000,
        "worker_cpu_util": cpu_used / elapsed,
        "redis_commands_per_job": stats.total_calls / n,
        "redis_usec_per_job": stats.total_usec / n,
        "redis_top_commands": [(name, round(count / n, 2)) for name, count in stats.top(10)],
    }


def run_idle_delay(stack: BenchStack, count: int, gap_s: float = 0.02) -> dict[str, Any]:
    """One job at a time into an idle worker: the delay is the queue's own overhead."""
    assert stack.redis is not None
    drain = Drain(stack)
    drain.wait(60)
    ids: list[str] = []
    with api_client(stack) as client:
        for i in range(count):
            response = client.post("/v1/jobs", json=job_body(i))
            response.raise_for_status()
            ids.append(response.json()["id"])
            time.sleep(gap_s)
    drain.wait(120)
    times = read_times(stack.redis, ids)
    check_finished(times, count)
    delays = [t.queue_delay_s * 1000 for t in times]
    return {
        "jobs": count,
        "gap_ms": gap_s * 1000,
        "queue_delay_p50_ms": percentile(delays, 50),
        "queue_delay_p99_ms": percentile(delays, 99),
        "queue_delay_max_ms": max(delays),
    }
