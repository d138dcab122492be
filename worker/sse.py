"""Server-sent events, both ways: the one parser of llmq, for the proxy's streamed answers (worker) and a job's
event stream (`llmq watch`), and the one writer, for that event stream (the API's /v1/jobs/{id}/events).

Why not a library: httpx2 ships `EventSource` (derived from httpx-sse), but it drops a last event that no blank
line follows, which a proxy closing right after `data: [DONE]` sends, and it builds a dataclass per event from
decoded text chunks on the worker's hot path. httpx-sse itself imports httpx, not httpx2.

Parsing follows the WHATWG event-stream rules: comment lines (`:` keep-alives) are skipped, multi-line data is
joined with "\\n", an event is dispatched at a blank line, and the `id` outlives its event (it is what a client
resumes from with Last-Event-ID). Two tolerances: `end` still dispatches a final event with no blank line after
it, and an answer that is not an event stream at all (an HTML error page, a JSON body) gives no events rather
than an error: callers decide by `is_event_stream` on the content type first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MEDIA_TYPE = "text/event-stream"
# A comment line: it keeps idle connections open through proxies and is skipped by every reader.
KEEP_ALIVE = ": keep-alive\n\n"

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_TRAILING_BREAK = re.compile(r"(?:\r\n|\r|\n)\Z")


@dataclass(frozen=True, slots=True)
class SseEvent:
    data: str
    event: str = "message"
    id: str | None = None  # the last id the stream sent, this event's or an earlier one's


def is_event_stream(content_type: str | None) -> bool:
    """Whether a `Content-Type` header announces an event stream."""
    return (content_type or "").split(";", 1)[0].strip().lower() == MEDIA_TYPE


def format_event(data: str, event: str | None = None, event_id: str | None = None) -> str:
    """One event as it goes on the wire; `SseParser` reads it back as `SseEvent(data, event, event_id)`."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    if event is not None:
        head += f"event: {event}\n"
    if "\n" in data or "\r" in data:  # each line of the data its own field (compact JSON has no raw break)
        return head + "".join(f"data: {line}\n" for line in _LINE_BREAK.split(data)) + "\n"
    return f"{head}data: {data}\n\n"


class SseParser:
    """Events, fed line by line.

    Items are usually already lines (httpx2's `iter_lines()`), but one trailing terminator is tolerated and
    embedded breaks are split, so file-like input works too.
    """

    def __init__(self) -> None:
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._first = True

    def feed(self, item: str) -> list[SseEvent]:
        """The events completed by this item (usually none or one)."""
        events: list[SseEvent] = []
        # Most items are one line already: the regular expressions only for those that are not.
        broken = "\n" in item or "\r" in item
        lines = _LINE_BREAK.split(_TRAILING_BREAK.sub("", item, count=1)) if broken else [item]
        for line in lines:
            if self._first:
                # The spec allows one leading byte-order mark on the stream.
                line = line.removeprefix("\ufeff")
                self._first = False
            if not line:
                if self._data:
                    events.append(SseEvent("\n".join(self._data), self._event or "message", self._id))
                    self._data = []
                self._event = ""
                continue
            if line[0] == ":":
                continue
            name, sep, value = line.partition(":")
            if sep and value[:1] == " ":
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id" and "\0" not in value:
                self._id = value
            # `retry` and unknown fields carry nothing llmq uses.
        return events

    def end(self) -> list[SseEvent]:
        """The last event, when the input stopped without a blank line after it."""
        events = [SseEvent("\n".join(self._data), self._event or "message", self._id)] if self._data else []
        self._data = []
        self._event = ""
        return events


def iter_events(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Every event in `lines`, the last one even without a blank line after it."""
    parser = SseParser()
    for item in lines:
        yield from parser.feed(item)
    yield from parser.end()
