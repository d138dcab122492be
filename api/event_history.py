"""A job's event history: the events its record tells, then those its stream holds.

Workers write a job's event stream only once somebody follows the job (see
`llmq.worker.jobs.scripts`): the record alone tells what came before, since it keeps every
attempt with its start, outcome and retry delay. Told events get the ids `0-1`, `0-2`, ...
below any id Redis gives, so `Last-Event-ID` resumes across both parts, and they are the
same on every read: the watch point stored with the record says how many of them there are.
"""

from __future__ import annotations

import json
from typing import Any

from llmq.worker.jobs.record import TERMINAL, parse_json_lines, state_change

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
        records, count = fields["watched"].split(",")
        return int(records), int(count)
    if fields.get("stream") == "1" or last_stream_id != "0-0":
        return 0, 0  # a streaming request's stream (or one from before watch points) holds all after `queued`
    return None


def told_events(fields: dict[str, str], upto: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The state events the record tells, in order: all of them, or those before the watch point `upto`."""
    attempts = parse_json_lines(fields.get("attempts"))
    events = [state_change("queued", float(fields.get("created_at") or 0))]
    records, count = upto if upto is not None else (len(attempts), int(fields.get("attempt_count") or 0))
    for attempt in attempts[:records]:
        started = float(attempt.get("started_at", attempt.get("finished_at", 0)))
        events.append(state_change("running", started, attempt=attempt["n"]))
        if "retry_in_s" in attempt:
            ended = round(started + float(attempt.get("duration_ms", 0)) / 1000, 6)
            events.append(state_change("retrying", ended, attempt=attempt["n"], retry_in_s=attempt["retry_in_s"],
                                 reason=attempt["outcome"]))
    if count > records:
        # The attempt in hand then: its record, once written, has its start; until then the record's field does.
        record = next((a for a in attempts if a.get("n") == count), {})
        at = record.get("started_at") or fields.get("attempt_started_at") or 0
        events.append(state_change("running", float(at), attempt=count))
    if upto is None and fields.get("status") in TERMINAL:
        error = json.loads(fields["error"]) if fields.get("error") else None
        events.append(state_change(fields["status"], float(fields.get("finished_at") or 0),
                             **({"error": error} if error else {})))
    return events
