"""Waiting on a relayed job: its events as they come, and the caller's disconnect.

A relayed job's event stream is written from its submission (`NewJob.relay`), so reading it from `0-0`
sees everything after `queued`. `job_events` is the one place this route waits on Redis: a shared reader of
event streams can take its place without touching the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

from llmq.api.job_store import AsyncJobStore
from llmq.worker.jobs.record import is_terminal_event

T = TypeVar("T")
Event = tuple[str, dict[str, Any]]
STREAM_START = "0-0"


async def job_events(store: AsyncJobStore, job_id: str, after_id: str, timeout_s: float) -> list[Event]:
    """The job's events after `after_id`, waiting up to `timeout_s` for the first one ([] when none came)."""
    # BLOCK 0 would wait for ever.
    return await store.read_events(job_id, after_id, max(1, int(timeout_s * 1000)))


async def wait_finished(store: AsyncJobStore, job_id: str, timeout_s: float) -> dict[str, str] | None:
    """The job's record once it is finished, or None when `timeout_s` ran out first."""
    deadline = time.monotonic() + timeout_s
    last_id = STREAM_START
    while (remaining := deadline - time.monotonic()) > 0:
        events = await job_events(store, job_id, last_id, remaining)
        if events:
            last_id = events[-1][0]
            if any(is_terminal_event(event) for _, event in events):
                return await store.fields(job_id)
    return None


class Disconnected(Exception):
    """The caller went away before its answer was ready."""


async def _disconnect(request: Request) -> None:
    # The body has been read: the next message the server gives is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; raises Disconnected (and stops `work`) if the caller goes away first."""
    work_task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait((work_task, listener), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work_task, listener):
            if not task.done():
                task.cancel()
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    raise Disconnected
