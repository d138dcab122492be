"""Server-sent events: turn the lines of an event stream into (id, event, data) frames."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Frame:
    id: str | None
    event: str
    data: str


def frames(lines: Iterable[str]) -> Iterator[Frame]:
    """Frames as the SSE spec assembles them; comments (keep-alives) are skipped."""
    event_id: str | None = None
    event = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield Frame(event_id, event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id" and "\0" not in value:
            # Per the spec the id outlives its frame: it is what Last-Event-ID resumes from.
            event_id = value
