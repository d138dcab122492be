"""The bridge from synchronous task code to the worker's event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import greenback
import pytest

from llmq.worker.runtime.event_loop import get_loop, on_loop_thread, wait


async def answer_after(seconds: float, value: str) -> str:
    await asyncio.sleep(seconds)
    return value


def run_in_portals(*sync_fns: object) -> list[object]:
    """Run synchronous functions as concurrent tasks on the worker's loop, each in a portal (as the pool does)."""

    async def all_of() -> list[object]:
        return await asyncio.gather(*(greenback.with_portal_run_sync(fn) for fn in sync_fns))  # type: ignore[arg-type]

    return asyncio.run_coroutine_threadsafe(all_of(), get_loop()).result(timeout=10)


def test_from_a_plain_thread_wait_blocks_until_the_loop_answers() -> None:
    assert not on_loop_thread()
    assert wait(answer_after(0.01, "ok")) == "ok"


def test_a_plain_thread_cannot_hand_over_a_bare_future() -> None:
    with pytest.raises(TypeError):
        wait(asyncio.Future(loop=get_loop()))


def test_in_portals_waits_overlap_on_the_one_loop_thread() -> None:
    seen: list[tuple[str, bool]] = []
    arrived: list[str] = []
    all_arrived = asyncio.Event()

    async def answer_when_all_arrived(name: str) -> str:
        # Returns only once every task is waiting at once: run one after another, the first would never return.
        arrived.append(name)
        if len(arrived) == 20:
            all_arrived.set()
        await asyncio.wait_for(all_arrived.wait(), timeout=5)
        return await answer_after(0.3, name)

    def task(name: str) -> str:
        seen.append((threading.current_thread().name, on_loop_thread()))
        return wait(answer_when_all_arrived(name))

    started = time.monotonic()
    results = run_in_portals(*(lambda n=n: task(f"t{n}") for n in range(20)))
    elapsed = time.monotonic() - started
    assert results == [f"t{n}" for n in range(20)]
    assert seen == [("llmq-event-loop", True)] * 20
    assert elapsed < 3.0, f"20 waits of 0.3 s took {elapsed:.1f}s: they ran one after another"


def test_sync_code_on_the_loop_without_a_portal_is_refused() -> None:
    async def no_portal() -> None:
        coro = answer_after(0, "x")
        try:
            wait(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="greenback portal"):
        asyncio.run_coroutine_threadsafe(no_portal(), get_loop()).result(timeout=5)
