"""The one SSE parser (worker and CLI) and writer (API), as tables: lines in, events out; events out and back."""

from __future__ import annotations

import pytest

from llmq.worker.sse import KEEP_ALIVE, SseEvent, SseParser, format_event, is_event_stream, iter_events

E = SseEvent

CASES = {
    "basic": (["data: a", "", "data: b", ""], [E("a"), E("b")]),
    "comments and keep-alives": ([": keep-alive", "", "data: a", ": note", ""], [E("a")]),
    "no space after the colon; only one space stripped": (["data:a", "", "data:  b", ""], [E("a"), E(" b")]),
    "multi-line data": (["data: line1", "data: line2", ""], [E("line1\nline2")]),
    "CRLF": (["data: a\r", "\r", "data: b\r", "\r"], [E("a"), E("b")]),
    "raw text with breaks": (["data: a\r\n\r\ndata: b\n\n"], [E("a"), E("b")]),
    "a last event without a blank line": (["data: a", "", "data: [DONE]"], [E("a"), E("[DONE]")]),
    "a last event without a blank line, with its type and id": (
        ["event: state", "id: 9-0", "data: x"], [E("x", "state", "9-0")]),
    "event type and id": (["event: state", "id: 1-0", "data: a", ""], [E("a", "state", "1-0")]),
    "the id outlives its event; the type does not": (
        ["event: delta", "id: 1-0", "data: a", "", "data: b", ""], [E("a", "delta", "1-0"), E("b", "message", "1-0")]),
    "an id with NUL is ignored": (["id: 1\0", "data: a", ""], [E("a")]),
    "retry and unknown fields": (["retry: 1000", "foo: bar", "data: a", "", "event: ping", ""], [E("a")]),
    "a field without a colon": (["data", ""], [E("")]),
    "extra blank lines": (["", "", "data: a", "", ""], [E("a")]),
    "a leading byte-order mark": (["\ufeffdata: a", ""], [E("a")]),
    "not SSE at all: JSON": (['{"error": {"message": "bad gateway"}}'], []),
    "not SSE at all: HTML": (["<html>", "<body>502 Bad Gateway</body>", "</html>", ""], []),
    "nothing": ([], []),
}


@pytest.mark.parametrize(("lines", "expected"), CASES.values(), ids=CASES.keys())
def test_events(lines: list[str], expected: list[SseEvent]) -> None:
    assert list(iter_events(lines)) == expected


def test_events_come_as_soon_as_their_blank_line() -> None:
    parser = SseParser()
    assert parser.feed("data: a") == []
    assert parser.feed("") == [E("a")]
    assert parser.feed("data: b") == []
    assert parser.end() == [E("b")]
    assert parser.end() == []


@pytest.mark.parametrize(("content_type", "expected"), [
    ("text/event-stream", True),
    ("text/event-stream; charset=utf-8", True),
    ("Text/Event-Stream", True),
    ("application/json", False),
    ("text/html; charset=utf-8", False),
    ("", False),
    (None, False),
])
def test_is_event_stream(content_type: str | None, expected: bool) -> None:
    assert is_event_stream(content_type) is expected


WRITTEN = {
    "data only": (SseEvent("a"), "data: a\n\n"),
    "JSON with type and id": (SseEvent('{"type":"state"}', "state", "1-0"),
                              'id: 1-0\nevent: state\ndata: {"type":"state"}\n\n'),
    "data of several lines": (SseEvent("a\nb\r\nc", "delta"), "event: delta\ndata: a\ndata: b\ndata: c\n\n"),
    "empty data": (SseEvent(""), "data: \n\n"),
}


@pytest.mark.parametrize(("event", "wire"), WRITTEN.values(), ids=WRITTEN.keys())
def test_what_is_written_reads_back(event: SseEvent, wire: str) -> None:
    written = format_event(event.data, None if event.event == "message" else event.event, event.id)
    assert written == wire
    read = list(iter_events((KEEP_ALIVE + written + KEEP_ALIVE).split("\n")))
    assert read == [SseEvent(event.data.replace("\r\n", "\n"), event.event, event.id)]
