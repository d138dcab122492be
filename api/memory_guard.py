"""Redis's memory against its `maxmemory`: new jobs are refused above a high-water mark, so running ones can finish.

With `maxmemory-policy noeviction`, a full Redis refuses every write, a running job's result and retry included.
Refusing new work a margin below the limit (`LLMQ_REDIS_HIGH_WATER`, a fraction of `maxmemory`) keeps that margin
for the jobs already taken. `INFO memory` is read at most once every `REFRESH_S` per API process, never per request;
the submit script itself is refused by Redis once memory is over the limit (see `worker.jobs.scripts`), so a stale
reading can let a submission through only while Redis still has room for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from llmq.api.errors import ApiError

REFRESH_S = 1.0
RETRY_AFTER_S = 30
# What one job holds in Redis besides its request: the record's other fields, its broker message, index entries.
JOB_OVERHEAD_BYTES = 2048


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


@dataclass(frozen=True)
class MemoryReading:
    used_bytes: int
    max_bytes: int  # 0: Redis has no limit

    @property
    def full(self) -> bool:
        return bool(self.max_bytes) and self.used_bytes >= self.max_bytes

    def describe(self) -> str:
        if not self.max_bytes:
            return f"{_mb(self.used_bytes)} used, no maxmemory set"
        return f"{_mb(self.used_bytes)} of {_mb(self.max_bytes)} used ({self.used_bytes / self.max_bytes:.0%})"


def job_footprint_bytes(request_json: str, metadata_json: str = "") -> int:
    """An estimate of a new job's size in Redis, to refuse a batch that would cross the mark before it is written."""
    return len(request_json) + len(metadata_json) + JOB_OVERHEAD_BYTES


class MemoryGuard:
    def __init__(
        self, client: aioredis.Redis, high_water: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.redis = client
        self.high_water = high_water
        self._clock = clock
        self._reading: MemoryReading | None = None
        self._read_at = 0.0
        self._lock = asyncio.Lock()

    async def refresh(self) -> MemoryReading:
        """A reading taken now (for /readyz), kept for the submissions that follow."""
        info = await self.redis.info("memory")
        self._reading = MemoryReading(int(info["used_memory"]), int(info["maxmemory"]))
        self._read_at = self._clock()
        return self._reading

    async def reading(self) -> MemoryReading:
        """The last reading, or a new one if it is older than `REFRESH_S`; one `INFO` at a time per process."""
        if self._reading is None or self._clock() - self._read_at >= REFRESH_S:
            async with self._lock:
                if self._reading is None or self._clock() - self._read_at >= REFRESH_S:
                    await self.refresh()
        assert self._reading is not None
        return self._reading

    def above_high_water(self, reading: MemoryReading, extra_bytes: int = 0) -> bool:
        return bool(reading.max_bytes) and reading.used_bytes + extra_bytes > self.high_water * reading.max_bytes

    async def check_room(self, extra_bytes: int) -> None:
        """Refuses (503) new work that would take Redis above the high-water mark."""
        reading = await self.reading()
        if self.above_high_water(reading, extra_bytes):
            raise ApiError(
                503, "unavailable",
                f"Job storage (Redis) is nearly full ({reading.describe()}); new jobs are refused above "
                f"{self.high_water:.0%} of its maxmemory (LLMQ_REDIS_HIGH_WATER) so that running jobs can finish. "
                "Nothing was recorded; try again once jobs have drained.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
