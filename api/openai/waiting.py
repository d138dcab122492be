"""Waiting on a relayed job: its events as they come, and the caller's disconnect.

A relayed job's event stream is written from its submission (`NewJob.relay`), so reading it from `0-0`
sees everything after `queued`. `job_events` is the one place this route waits on Redis, through the API
process's one shared reader of event streams (`api.stream_reader`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Request

from llmq.api.job_store import AsyncJobStore
from llmq.api.openai.answers import ANSWER_FIELDS
from llmq.api.routes.jobs import no_place
from llmq.api.stream_reader import NoPlace, StreamReader
from llmq.worker.jobs.record import is_terminal_event

T = TypeVar("T")
Event = tuple[str, dict[str, Any]]
STREAM_START = "0-0"


async def job_events(reader: StreamReader, job_id: str, after_id: str, timeout_s: float) -> list[Event]:
    """The job's events after `after_id`, waiting up to `timeout_s` for the first one ([] when none came).

    Each wait follows the stream anew from `after_id`, so nothing between two waits is missed; a 503 when every
    place among the waiting requests stays taken."""
    try:
        async with reader.follow(job_id, after_id) as events:
            return await events.next(timeout_s)
    except NoPlace as err:
        raise no_place(err) from None


async def wait_finished(
    store: AsyncJobStore, reader: StreamReader, job_id: str, timeout_s: float
) -> dict[str, str] | None:
    """The job's record once it is finished, or None when `timeout_s` ran out first."""
    deadline = time.monotonic() + timeout_s
    last_id = STREAM_START
    while (remaining := deadline - time.monotonic()) > 0:
        events = await job_events(reader, job_id, last_id, remaining)
        if events:
            last_id = events[-1][0]
            if any(is_terminal_event(event) for _, event in events):
                return await store.some_fields(job_id, ANSWER_FIELDS)
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
