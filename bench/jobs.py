"""Jobs as the benchmarks see them: the body submitted, and the timings read back from their records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis

from llmq.worker import redis_keys

MODEL = "bench-model"


def chat_request(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"benchmark prompt {i}"}]}


def job_body(i: int) -> dict[str, Any]:
    return {"request": chat_request(i)}


@dataclass(frozen=True)
class JobTimes:
    status: str
    created: float
    started: float  # first attempt's start
    call_end: float  # first attempt's start + its duration
    finished: float

    @property
    def queue_delay_s(self) -> float:
        return self.started - self.created


def read_times(client: redis.Redis, ids: list[str], chunk: int = 1000) -> list[JobTimes]:
    """Timings of finished jobs, read in pipelined chunks."""
    found: list[JobTimes] = []
    for offset in range(0, len(ids), chunk):
        pipe = client.pipeline(transaction=False)
        for job_id in ids[offset:offset + chunk]:
            pipe.hmget(redis_keys.job(job_id), "status", "created_at", "attempts", "finished_at")
        for status, created, attempts, finished in pipe.execute():
            if not attempts:
                found.append(JobTimes(status or "missing", float(created or 0), 0.0, 0.0, float(finished or 0)))
                continue
            first = json.loads(attempts.split("\n")[0])
            started = float(first["started_at"])
            found.append(JobTimes(status, float(created), started, started + first["duration_ms"] / 1000,
                                  float(finished or 0)))
    return found


def peak_in_flight(times: list[JobTimes]) -> tuple[int, float]:
    """Most calls in flight at once, and when."""
    edges = sorted([(t.started, 1) for t in times] + [(t.call_end, -1) for t in times])
    current = best = 0
    best_at = 0.0
    for at, step in edges:
        current += step
        if current > best:
            best, best_at = current, at
    return best, best_at


def in_flight_at(times: list[JobTimes], at: float) -> int:
    return sum(1 for t in times if t.started <= at < t.call_end)


def rss_at_full_load(times: list[JobTimes], samples: list[tuple[float, int]], share: float = 0.9) -> tuple[int, int]:
    """Highest RSS sampled while at least `share` of the peak number of calls were in flight, and that number."""
    peak, _ = peak_in_flight(times)
    loaded = [(rss, in_flight_at(times, at)) for at, rss in samples]
    full = [item for item in loaded if item[1] >= share * peak]
    if not full:  # a run too short for the sampler: take the busiest sample
        full = sorted(loaded, key=lambda item: item[1])[-1:]
    return max(full) if full else (0, 0)
