"""A streamed call: the proxy's chunks relayed to the caller as the worker reads them.

The worker publishes each `data:` payload of the proxy's stream, verbatim, as a `chunk` event of the job's
attempt (`JobStore.append_chunks`). Until the first chunk is sent, nothing is committed: an attempt that
fails is retried unseen, and a job that fails for good gets a real HTTP status (`api.openai.answers`). Once
text has been sent, another attempt would write a different answer, so the caller never gets a second
attempt's chunks: a retry ends the stream with one `data: {"error": ...}` object (the SDK raises `APIError`
for it) and the job is cancelled, as nobody will read it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions

from llmq.api.job_store import AsyncJobStore
from llmq.api.openai.answers import failure
from llmq.api.openai.waiting import STREAM_START, Event, job_events
from llmq.worker.jobs.record import TERMINAL

log = logging.getLogger("llmq.api")
DONE_FRAME = b"data: [DONE]\n\n"
KEEP_ALIVE_FRAME = b": keep-alive\n\n"
# One blocking read at most this long, so keep-alives pass proxies while the model thinks.
KEEP_ALIVE_S = 15.0


def data_frame(payload: str) -> bytes:
    """One SSE event carrying `payload` (a payload of several lines goes as several `data:` lines)."""
    return b"".join(b"data: " + line.encode() + b"\n" for line in payload.split("\n")) + b"\n"


def error_frame(message: str, code: str) -> bytes:
    error = {"message": message, "type": "upstream_error", "param": None, "code": code}
    return data_frame(json.dumps({"error": error}, ensure_ascii=False, separators=(",", ":")))


def completion_as_chunk(result: str) -> str:
    """A proxy that ignored `stream` answered in one piece: the same answer as one chunk."""
    completion: dict[str, Any] = json.loads(result)
    choices = [
        {"index": choice.get("index", 0), "delta": choice.get("message") or {},
         "finish_reason": choice.get("finish_reason"), **({"logprobs": choice["logprobs"]} if "logprobs" in choice
                                                           else {})}
        for choice in completion.get("choices") or []
    ]
    chunk = {**completion, "object": "chat.completion.chunk", "choices": choices}
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


@dataclass
class Opening:
    """What the first wait found: chunks to send (`attempt` is theirs), the finished record, or neither."""

    attempt: int = 0
    frames: list[bytes] = field(default_factory=list)
    last_id: str = STREAM_START
    finished: dict[str, str] | None = None
    done: bool = False  # the frames already end the stream


def _latest_attempt(events: list[Event]) -> int:
    return max((int(e.get("attempt") or 0) for _, e in events if e.get("type") == "state"), default=0)


async def wait_for_opening(store: AsyncJobStore, job_id: str, timeout_s: float) -> Opening:
    """Read the job's events until its first chunk of an attempt still running, or its end, or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    opening = Opening()
    while (remaining := deadline - time.monotonic()) > 0:
        events = await job_events(store, job_id, opening.last_id, remaining)
        if not events:
            continue
        opening.last_id = events[-1][0]
        terminal = next((e for _, e in events if e.get("type") == "state" and e.get("status") in TERMINAL), None)
        if terminal is not None:
            fields = await store.fields(job_id)
            if terminal.get("status") != "succeeded":
                opening.finished = fields
                return opening
            # Succeeded within one read: the chunks of its last attempt, or the answer as one chunk.
            last = max((int(e.get("attempt") or 0) for _, e in events if e.get("type") == "chunk"), default=0)
            chunks = [e["data"] for _, e in events if e.get("type") == "chunk" and e.get("attempt") == last]
            if not chunks or last < _latest_attempt(events):
                chunks = [completion_as_chunk(fields.get("result", "{}"))]
            opening.frames = [*(data_frame(c) for c in chunks), DONE_FRAME]
            opening.done = True
            return opening
        # Chunks of an attempt that this same read shows already failed were never seen: skip them.
        latest = _latest_attempt(events)
        chunks = [e for _, e in events if e.get("type") == "chunk" and int(e.get("attempt") or 0) >= latest]
        if chunks:
            opening.attempt = int(chunks[0].get("attempt") or 0)
            opening.frames = [data_frame(e["data"]) for e in chunks if e.get("attempt") == opening.attempt]
            return opening
    return opening


async def relay(
    store: AsyncJobStore, job_id: str, opening: Opening, silence_s: float, on_unfinished: Any
) -> AsyncIterator[bytes]:
    """The caller's stream: the opening chunks, then the rest of the attempt's, then `[DONE]` or one error.

    `on_unfinished()` runs when the stream ends before the job does (an error sent, or the caller gone)."""
    finished = opening.done
    try:
        for frame in opening.frames:
            yield frame
        if finished:
            return
        last_id = opening.last_id
        quiet_since = time.monotonic()
        while True:
            events = await job_events(store, job_id, last_id, KEEP_ALIVE_S)
            if not events:
                if time.monotonic() - quiet_since > silence_s:
                    yield error_frame(f"The proxy sent nothing for {silence_s:g} s (job {job_id}); the call was "
                                      "ended and its job cancelled.", "stream_stalled")
                    return
                yield KEEP_ALIVE_FRAME
                continue
            quiet_since = time.monotonic()
            for event_id, event in events:
                last_id = event_id
                kind = event.get("type")
                attempt = int(event.get("attempt") or 0)
                if kind == "chunk" and attempt == opening.attempt:
                    yield data_frame(event["data"])
                elif kind == "state" and event.get("status") in TERMINAL:
                    finished = True
                    if event.get("status") == "succeeded":
                        yield DONE_FRAME
                    else:
                        error = failure(await store.fields(job_id))
                        yield error_frame(error.message, error.code or "failed")
                    return
                elif attempt > opening.attempt or (kind == "state" and event.get("status") == "retrying"):
                    # Another attempt is coming after part of this one's text was sent: never splice the two.
                    reason = event.get("reason") or "a new attempt started"
                    yield error_frame(
                        f"The proxy's stream broke off after part of the answer was sent (attempt {opening.attempt}: "
                        f"{reason}); the call was ended rather than mix in another attempt's text, and job {job_id} "
                        "was cancelled.", "stream_interrupted")
                    return
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
        # Headers are sent: the error goes in the stream, as the proxy's own would.
        log.warning("relay ended early, redis unavailable: %s", type(err).__name__, extra={"job_id": job_id})
        yield error_frame(f"Job storage (Redis) became unreachable mid-stream (job {job_id}).", "unavailable")
    finally:
        if not finished:
            on_unfinished()
