"""Noticing that a client has gone while its request waits, so the wait (and its place) ends at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

T = TypeVar("T")


async def client_gone(request: Request) -> None:
    """Returns once the client has closed the connection (the server's `http.disconnect`)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the (empty) body of a GET: nothing reads it


async def unless_client_leaves(request: Request, awaitable: Awaitable[T], fallback: T) -> T:
    """What `awaitable` gives, or `fallback` as soon as the client leaves (the awaitable is then cancelled)."""
    waiting = asyncio.ensure_future(awaitable)
    leaving = asyncio.ensure_future(client_gone(request))
    try:
        await asyncio.wait({waiting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        return waiting.result() if waiting.done() else fallback
    finally:
        for task in (waiting, leaving):
            task.cancel()
        # The wait's own clean-up (giving its place back) is done before the answer goes out.
        await asyncio.gather(waiting, leaving, return_exceptions=True)
