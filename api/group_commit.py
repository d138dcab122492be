"""Group commit: concurrent requests' writes share one Redis round trip.

Each single-job POST used to send its own script call. Under load, the round trip and
redis-py's work per call were a fifth of the API's CPU. Here a write waits only while the
previous group is on the wire: a lone request goes at once, and the requests that arrive
during one round trip all go in the next. No timer, so there is no added latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


class GroupCommit(Generic[Item, Outcome]):
    """Calls `commit` with the items of every caller that arrived while the previous commit ran.

    `commit` returns one outcome per item, in order; if it raises, every caller of that group gets the error.
    Must be used from one event loop."""

    def __init__(self, commit: Callable[[list[Item]], Awaitable[list[Outcome]]], max_items: int) -> None:
        self._commit = commit
        self._max_items = max_items
        self._waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self._running = False
        self._task: asyncio.Task[None] | None = None  # held so the loop does not lose it

    async def __call__(self, item: Item) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if not self._running:
            self._running = True
            self._task = asyncio.create_task(self._drain())
        # A caller that goes away cancels its future but does not take its item back: the item is committed
        # with its group, and the outcome nobody waits for is dropped (no `asyncio.shield`: a future and two
        # callbacks more per call).
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting[: self._max_items], self._waiting[self._max_items:]
                try:
                    outcomes = await self._commit([item for item, _ in group])
                except Exception as err:  # every caller of the group answers for it (a 503, for Redis errors)
                    for _, future in group:
                        if not future.done():
                            future.set_exception(err)
                    continue
                except asyncio.CancelledError:  # the server is stopping: nobody is left waiting forever
                    for _, future in group + self._waiting:
                        future.cancel()
                    self._waiting = []
                    raise
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._running = False
