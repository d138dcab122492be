"""Group commit: who goes with whom, and who hears of a failure."""

from __future__ import annotations

import asyncio

import pytest

from llmq.api.group_commit import GroupCommit


async def one_turn() -> None:
    """Let every task that is ready run up to its next wait: new callers reach the queue, nothing more."""
    await asyncio.sleep(0)


class Recorder:
    """A commit that records its groups; each waits until the test opens the gate."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.groups: list[list[int]] = []
        self.gate = asyncio.Event()
        self.started = asyncio.Condition()
        self.fail_on = fail_on

    async def commit(self, items: list[int]) -> list[str]:
        async with self.started:
            self.groups.append(items)
            self.started.notify_all()
        await self.gate.wait()
        if self.fail_on in items:
            raise ConnectionError("redis went away")
        return [f"id-{item}" for item in items]

    async def until_started(self, count: int) -> None:
        """Until `count` commits have started (each then waits at the gate, or has passed it)."""
        async with self.started:
            await asyncio.wait_for(self.started.wait_for(lambda: len(self.groups) >= count), 1)


def test_a_lone_call_goes_at_once() -> None:
    async def run() -> tuple[str, list[list[int]]]:
        recorder = Recorder()
        recorder.gate.set()
        group = GroupCommit(recorder.commit, max_items=10)
        return await asyncio.wait_for(group(7), 1), recorder.groups

    assert asyncio.run(run()) == ("id-7", [[7]])


def test_calls_arriving_during_a_commit_go_together_in_the_next() -> None:
    async def run() -> tuple[list[str], list[list[int]]]:
        recorder = Recorder()
        group = GroupCommit(recorder.commit, max_items=4)
        first = asyncio.create_task(group(0))
        await recorder.until_started(1)  # the first commit is on the wire
        rest = [asyncio.create_task(group(i)) for i in range(1, 10)]
        await one_turn()
        assert recorder.groups == [[0]]  # nobody else went while it was in flight
        recorder.gate.set()
        return await asyncio.gather(first, *rest), recorder.groups

    outcomes, groups = asyncio.run(run())
    assert outcomes == [f"id-{i}" for i in range(10)]
    assert groups == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9]]


def test_a_failed_commit_fails_its_own_group_only() -> None:
    async def run() -> list[object]:
        recorder = Recorder(fail_on=2)
        group = GroupCommit(recorder.commit, max_items=3)
        first = asyncio.create_task(group(0))
        await recorder.until_started(1)
        rest = [asyncio.create_task(group(i)) for i in range(1, 6)]
        await one_turn()
        recorder.gate.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcomes = asyncio.run(run())
    assert outcomes[0] == "id-0"
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes[1:4])  # the group of [1, 2, 3]
    assert outcomes[4:] == ["id-4", "id-5"]


def test_a_caller_that_goes_away_does_not_take_its_item_back() -> None:
    async def run() -> list[list[int]]:
        recorder = Recorder()
        group = GroupCommit(recorder.commit, max_items=10)
        first = asyncio.create_task(group(0))
        await recorder.until_started(1)
        leaving = asyncio.create_task(group(1))
        staying = asyncio.create_task(group(2))
        await one_turn()
        leaving.cancel()
        recorder.gate.set()
        assert await first == "id-0"
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert await asyncio.wait_for(staying, 1) == "id-2", "the rest of its group still hears"
        return recorder.groups

    assert asyncio.run(run()) == [[0], [1, 2]]
