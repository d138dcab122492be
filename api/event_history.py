"""A job's event history: the events its record tells, then those its stream holds.

Workers write a job's event stream only once somebody follows the job (see
`llmq.worker.jobs.scripts`): the record alone tells what came before, since it keeps every
attempt with its start, outcome and retry delay. Told events get the ids `0-1`, `0-2`, ...
below any id Redis gives, so `Last-Event-ID` resumes across both parts, and they are the
same on every read: the watch point stored with the record says how many of them there are.
"""

from __future__ import annotations

import math
from typing import Any

from llmq.worker.jobs.record import TERMINAL, parse_json_lines, printable, read_json, state_change

TOLD_ID_MAJOR = "0"


def told_id(index: int) -> str:
    """The id of the index-th told event (0-based): `queued` is `0-1`."""
    return f"{TOLD_ID_MAJOR}-{index + 1}"


def told_index(event_id: str) -> int | None:
    """How many told events an id covers, or None for an id of the stream."""
    major, _, minor = event_id.partition("-")
    return int(minor) if major == TOLD_ID_MAJOR else None


def watch_point(fields: dict[str, str], last_stream_id: str) -> tuple[int, int] | None:
    """(attempt records, attempt count) when the stream began; None when there is no stream: the record tells all."""
    if fields.get("watched"):
        records, _, count = fields["watched"].partition(",")
        if records.isdigit() and count.isdigit():
            return int(records), int(count)
    if fields.get("stream") == "1" or last_stream_id != "0-0":
        return 0, 0  # a streaming request's stream (or one from before watch points) holds all after `queued`
    return None


def _time(value: object) -> float:
    """A time from the record; 0 when it is missing or not a finite number (a damaged record still tells)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0


def _count(value: object) -> int:
    return int(value) if isinstance(value, str) and value.isdigit() else 0


def told_events(fields: dict[str, str], upto: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The state events the record tells, in order: all of them, or those before the watch point `upto`."""
    attempts = parse_json_lines(fields.get("attempts"))
    events = [state_change("queued", _time(fields.get("created_at")))]
    records, count = upto if upto is not None else (len(attempts), _count(fields.get("attempt_count")))
    for attempt in attempts[:records]:
        started = _time(attempt.get("started_at", attempt.get("finished_at")))
        events.append(state_change("running", started, attempt=attempt.get("n")))
        if "retry_in_s" in attempt:
            ended = round(started + _time(attempt.get("duration_ms")) / 1000, 6)
            events.append(state_change("retrying", ended, attempt=attempt.get("n"),
                                       retry_in_s=printable(attempt["retry_in_s"]), reason=attempt.get("outcome")))
    if count > records:
        # The attempt in hand then: its record, once written, has its start; until then the record's field does.
        record = next((a for a in attempts if a.get("n") == count), {})
        at = record.get("started_at") or fields.get("attempt_started_at")
        events.append(state_change("running", _time(at), attempt=count))
    if upto is None and fields.get("status") in TERMINAL:
        error = read_json(fields["error"]) if fields.get("error") else None
        events.append(state_change(fields["status"], _time(fields.get("finished_at")),
                                   **({"error": error} if isinstance(error, dict) else {})))
    return events
