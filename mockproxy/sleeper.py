"""Sleeps that a shutdown can cut short, so hangs and slow answers never delay stopping the mock."""

from __future__ import annotations

import asyncio


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Sleeper:
    def __init__(self) -> None:
        self._sleeping: set[asyncio.Future[None]] = set()

    async def sleep(self, seconds: float) -> None:
        # Same cost as asyncio.sleep (one future, one timer), but the future is reachable by wake_all.
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(seconds, _wake, future)
        self._sleeping.add(future)
        try:
            await future
        finally:
            timer.cancel()
            self._sleeping.discard(future)

    def wake_all(self) -> None:
        for future in list(self._sleeping):
            _wake(future)
