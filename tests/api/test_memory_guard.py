"""The high-water mark: INFO read at most once a second per process, and what counts as above the mark."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llmq.api.errors import ApiError
from llmq.api.memory_guard import REFRESH_S, MemoryGuard, MemoryReading


class FakeInfo:
    """Stands in for the Redis client's `info("memory")`, counting the calls."""

    def __init__(self, used: int, maximum: int) -> None:
        self.memory = {"used_memory": used, "maxmemory": maximum}
        self.calls = 0

    async def info(self, section: str) -> dict[str, Any]:
        assert section == "memory"
        self.calls += 1
        await asyncio.sleep(0)
        return dict(self.memory)


def test_info_is_read_once_a_second_however_many_submissions() -> None:
    clock = [100.0]
    redis = FakeInfo(used=10, maximum=100)
    guard = MemoryGuard(redis, 0.9, clock=lambda: clock[0])  # type: ignore[arg-type]

    async def run() -> None:
        await asyncio.gather(*(guard.check_room(0) for _ in range(50)))
        clock[0] += REFRESH_S / 2
        await guard.check_room(0)
        assert redis.calls == 1
        clock[0] += REFRESH_S
        redis.memory["used_memory"] = 95
        with pytest.raises(ApiError) as refused:
            await guard.check_room(0)
        assert refused.value.status_code == 503 and "LLMQ_REDIS_HIGH_WATER" in refused.value.message
        assert refused.value.headers == {"Retry-After": "30"}
        assert redis.calls == 2

    asyncio.run(run())


@pytest.mark.parametrize(
    ("used", "maximum", "extra", "above"),
    [
        (10, 100, 0, False),
        (90, 100, 0, False),  # at the mark, not above it
        (91, 100, 0, True),
        (50, 100, 41, True),  # a batch that would cross it
        (10**9, 0, 10**9, False),  # no maxmemory: no mark
    ],
)
def test_above_high_water(used: int, maximum: int, extra: int, above: bool) -> None:
    guard = MemoryGuard(FakeInfo(used, maximum), 0.9)  # type: ignore[arg-type]
    assert guard.above_high_water(MemoryReading(used, maximum), extra) is above
    assert MemoryReading(used, maximum).full is (maximum > 0 and used >= maximum)
