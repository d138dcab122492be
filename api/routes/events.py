"""/v1/jobs/{id}/events: a job's live event stream (server-sent events).

Served by hand, over Starlette's `StreamingResponse`, rather than by sse-starlette's `EventSourceResponse`. That
library writes ids, event types and keep-alive comments as this does, but the rest of what this route needs is
its own either way: resuming after a Last-Event-ID from the record's history and then the Redis stream, and
ending at the job's last event. What it adds costs on every connection: an anyio task group with a ping timer
and a task listening for the disconnect, where here the keep-alive is the blocking read's own timeout (one
comment per `BLOCK_MS` of silence) and the disconnect is checked once per read. Events are written by
`llmq.worker.sse.format_event`, the one writer, beside the one parser that `llmq watch` reads them with.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import redis.exceptions
from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from llmq.api.deps import CallerDep, StoreDep, StreamReaderDep
from llmq.api.errors import ApiError
from llmq.api.event_history import told_events, told_id, told_index, watch_point
from llmq.api.job_store import AsyncJobStore
from llmq.api.routes.jobs import check_id, check_owner, no_place
from llmq.api.schemas import ErrorResponse
from llmq.api.stream_reader import NoPlace, Place, StreamReader
from llmq.worker.jobs.record import TERMINAL, is_terminal_event, printable
from llmq.worker.sse import KEEP_ALIVE, MEDIA_TYPE, format_event

log = logging.getLogger("llmq.api")
router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

# Silence longer than this gets a comment line, so proxies in between keep the connection.
KEEP_ALIVE_S = 15.0
# A connection is bounded even though the job lives for days; the client resumes with Last-Event-ID.
MAX_CONNECTION_S = 600.0
STREAM_ID_PATTERN = re.compile(r"(\d{1,20})-(\d{1,20})", re.ASCII)
_U64_MAX = 2**64 - 1
# Shown of a refused id: enough to recognise it, not a megabyte echoed back.
_SHOWN_CHARS = 48
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 503)}


class EventStreamResponse(StreamingResponse):
    """A streamed `text/event-stream` body (also what /docs shows for this route).

    Its place among the waiting requests is given back however the response ends, even one whose body
    never started (a client gone before the first byte)."""

    media_type = MEDIA_TYPE
    place: Place | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            if self.place is not None:
                self.place.release()


def parse_event_id(raw: str | None) -> str | None:
    """A client's Last-Event-ID as a Redis stream id, None when absent; 400 when Redis would refuse to resume
    after it: not 'milliseconds-sequence' in ASCII digits, a part over 2^64-1, or the largest id of all, which
    has no id after it (Redis refuses an exclusive range from it)."""
    if raw is None or not raw.strip():
        return None
    match = STREAM_ID_PATTERN.fullmatch(raw.strip())
    millis, sequence = (int(match[1]), int(match[2])) if match else (-1, -1)
    if not 0 <= millis <= _U64_MAX or not 0 <= sequence <= _U64_MAX or millis == sequence == _U64_MAX:
        shown = raw if len(raw) <= _SHOWN_CHARS else raw[:_SHOWN_CHARS] + "…"
        raise ApiError(400, "invalid_request",
                       f"Last-Event-ID must be an id this stream sent, like '1700000000000-0': two numbers of at "
                       f"most {_U64_MAX} joined by '-', below the largest id (got {shown!r}).")
    return f"{millis}-{sequence}"


# Compact JSON that refuses NaN and infinities (a damaged stream entry may hold one): see `sse_event`.
_event_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode
EVENT_NAMES = frozenset({"state", "delta"})


def sse_event(event_id: str | None, event: dict[str, Any]) -> str:
    """One event of a job, its type named for EventSource listeners. Compact JSON has no raw newline, and the
    event's name is one llmq writes, so nothing read from storage can start a line of the frame."""
    try:
        data = _event_json(event)
    except ValueError:
        data = _event_json(printable(event))
    name = event.get("type") if event.get("type") in EVENT_NAMES else "state"
    return format_event(data, name, event_id)


async def event_frames(
    store: AsyncJobStore, reader: StreamReader, place: Place | None, job_id: str, fields: dict[str, str],
    last_stream_id: str, after_id: str | None,
) -> AsyncIterator[str]:
    """History after `after_id` (told by the record, then the stream's), then live events, until the terminal
    state, a disconnect or the cap. `fields` and `last_stream_id` come from one watch of the job; live events
    come from the process's one reader, in `place` (None for a finished job, which needs none)."""
    deadline = time.monotonic() + MAX_CONNECTION_S
    # The status is read before the history: if it is terminal here, its event is already told or streamed.
    finished = fields.get("status") in TERMINAL
    told = told_events(fields, watch_point(fields, last_stream_id))
    seen = told_index(after_id) if after_id is not None else 0
    stream_after = "-"
    if seen is None:  # an id of the stream: everything told came before it
        seen, stream_after = len(told), after_id or "-"
    try:
        for index in range(seen, len(told)):
            yield sse_event(told_id(index), told[index])
            if is_terminal_event(told[index]):
                return
        last_id = "0-0" if stream_after == "-" else stream_after
        for event_id, event in await store.history(job_id, stream_after):
            yield sse_event(event_id, event)
            last_id = event_id
            if is_terminal_event(event):
                return
        if finished or place is None:
            return
        # A client that leaves cancels this generator (Starlette listens for the disconnect): the
        # subscription and the place are given up at once.
        async with reader.follow(job_id, last_id, place) as events:
            while True:
                remaining_s = deadline - time.monotonic()
                if remaining_s <= 0:
                    return
                news = await events.next(min(KEEP_ALIVE_S, remaining_s))
                if not news:
                    yield KEEP_ALIVE
                    continue
                for event_id, event in news:
                    yield sse_event(event_id, event)
                    if is_terminal_event(event):
                        return
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        # Headers are already sent, so no error envelope is possible: end, and let the client resume.
        log.warning("event stream ended early, redis unavailable: %s", type(err).__name__,
                    extra={"job_id": job_id})
    finally:
        if place is not None:
            place.release()


@router.get(
    "/{job_id}/events",
    response_class=EventStreamResponse,
    responses={
        200: {
            "description": "Server-sent events `state` and `delta`; resume after an event with its `id`.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **ERRORS,
    },
)
async def job_events(
    job_id: str,
    caller: CallerDep,
    store: StoreDep,
    reader: StreamReaderDep,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id (EventSource's).")
    ] = None,
    last_event_id: Annotated[
        str | None, Query(description="Resume after this event id; the Last-Event-ID header wins.")
    ] = None,
) -> EventStreamResponse:
    """Job events as SSE, history first, to the final state; a `running` of a new attempt resets deltas."""
    after_id = parse_event_id(last_event_id_header if last_event_id_header is not None else last_event_id)
    check_id(job_id)
    fields, last_stream_id = await store.watch(job_id, caller.owners)
    check_owner(job_id, fields, caller)
    try:
        # Taken before the answer starts, so a caller who gets none is told so with a 503.
        place = None if fields.get("status") in TERMINAL else await reader.reserve()
    except NoPlace as err:
        raise no_place(err) from None
    response = EventStreamResponse(
        event_frames(store, reader, place, job_id, fields, last_stream_id, after_id),
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    response.place = place
    return response
