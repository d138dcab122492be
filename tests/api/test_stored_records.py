"""A stored job always renders: damaged records, written straight into Redis, read through the real API.

Whatever a record holds (NaN, broken JSON, missing fields, an unknown status, bytes that are not UTF-8), its owner
gets a 200 with valid JSON showing what can be shown, never a 500.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from llmq.worker import redis_keys
from llmq.worker.jobs.record import NewJob, dumps, new_job_id
from llmq.worker.secrets.key_vault import KeyVault
from tests.stack import CALLER_KEY, Stack

STATUSES = {"queued", "running", "retrying", "succeeded", "failed", "cancelled"}
GOOD_ATTEMPT = {"n": 1, "started_at": 1_700_000_000.5, "duration_ms": 12.5, "outcome": "http_500",
                "status_code": 500, "error_type": "http_status", "message": "boom", "retry_in_s": 1.0}


def record(stack: Stack) -> dict[str, str | bytes]:
    """A sound record of a failed job with one attempt, a result, a callback and a delivery, owned by CALLER_KEY."""
    owner = KeyVault(stack.env["LLMQ_SECRET"]).owner(CALLER_KEY)
    job = NewJob(id=new_job_id(), owner=owner, key_token="token", model="m", request_json='{"model":"m"}',
                 environment="test", priority="normal", max_attempts=3, created_at=1_700_000_000.0, app_id="7788",
                 metadata={"ticket": 1}, callback={"url": "https://example.com/hook"})
    fields: dict[str, str | bytes] = dict(job.fields)
    fields.update({
        "status": "failed", "finished_at": "1700000001.0", "attempts": dumps(GOOD_ATTEMPT) + "\n",
        "error": dumps({"type": "http_status", "message": "boom", "status_code": 500, "body_excerpt": None}),
        "result": dumps({"choices": [{"message": {"content": "hi"}}]}),
        "deliveries": dumps({"n": 1, "at": 1_700_000_002.0, "status_code": 200}) + "\n",
        "callback_status": "delivered",
    })
    return fields


NAN_ATTEMPT = '{"n":1,"started_at":NaN,"duration_ms":NaN,"outcome":"http_429","retry_in_s":NaN}\n'
DAMAGE: dict[str, dict[str, str | bytes | None]] = {
    "sound": {},
    "NaN in an attempt": {"attempts": NAN_ATTEMPT},
    "Infinity in an attempt": {"attempts": '{"n":1,"duration_ms":Infinity,"outcome":"ok","retry_in_s":-Infinity}\n'},
    "attempt line not JSON": {"attempts": dumps(GOOD_ATTEMPT) + "\n{broken\n"},
    "attempt line not an object": {"attempts": "[1,2]\n42\n\"text\"\nnull\n"},
    "attempt of the wrong types": {"attempts": '{"n":"first","started_at":"yesterday","outcome":7}\n'},
    "attempt n NaN": {"attempts": '{"n":NaN,"outcome":"ok"}\n'},
    "attempt with a huge time": {"attempts": '{"n":1,"outcome":"ok","started_at":1e300,"finished_at":1e20}\n'},
    "metadata not JSON": {"metadata": "{not json"},
    "metadata with NaN": {"metadata": '{"a":NaN,"b":[Infinity,-Infinity]}'},
    "metadata not an object": {"metadata": "[1,2,3]"},
    "result not JSON": {"result": "<html>"},
    "result with NaN": {"result": '{"choices":[],"usage":{"total_tokens":NaN}}'},
    "result a number": {"result": "12"},
    "error not JSON": {"error": "{"},
    "error without a message": {"error": '{"type":"x"}'},
    "error a string": {"error": '"boom"'},
    "callback not JSON": {"callback": "{"},
    "callback without a url": {"callback": "{}"},
    "callback a list": {"callback": "[]"},
    "unknown status": {"status": "exploded"},
    "no status": {"status": None},
    "created_at not a number": {"created_at": "yesterday"},
    "created_at NaN": {"created_at": "nan"},
    "created_at infinite": {"created_at": "inf"},
    "created_at out of range": {"created_at": "1e300"},
    "no created_at nor updated_at": {"created_at": None, "updated_at": None},
    "finished_at negative infinity": {"finished_at": "-inf"},
    "next_attempt_at empty": {"next_attempt_at": ""},
    "max_attempts not a number": {"max_attempts": "lots"},
    "max_attempts NaN": {"max_attempts": "nan"},
    "max_attempts huge": {"max_attempts": "9" * 400},
    "no model, environment, priority": {"model": None, "environment": None, "priority": None},
    "stream not a flag": {"stream": "maybe"},
    "deliveries not JSON": {"deliveries": "{\n[\n"},
    "delivery without its time": {"deliveries": '{"n":1}\n'},
    "callback_status unknown": {"callback_status": 42},
    "bytes that are not UTF-8": {"metadata": b'{"a":"\xff\xfe"}', "model": b"\xc3\x28"},
    "an unknown field": {"surprise": "{"},
    "only the owner": {name: None for name in ("id", "model", "environment", "priority", "max_attempts",
                                               "status", "created_at", "updated_at", "stream", "request",
                                               "metadata", "callback", "callback_status", "finished_at",
                                               "attempts", "error", "result", "deliveries", "key_token")},
}


def strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def store(stack: Stack, job_id: str, fields: dict[str, str | bytes]) -> None:
    raw = redis.Redis.from_url(stack.redis_url)  # bytes as given: no decoding on the way in
    try:
        raw.delete(redis_keys.job(job_id))
        raw.hset(redis_keys.job(job_id), mapping=fields)  # type: ignore[arg-type]
        raw.expire(redis_keys.job(job_id), 600)
    finally:
        raw.close()


@pytest.fixture(autouse=True)
def forget_damaged_records(stack: Stack) -> Iterator[None]:
    """The damaged records go when the test ends: other tests read every job of the shared stack."""
    before = set(stack.redis.scan_iter("llmq:job:*", count=10_000))
    yield
    raw = redis.Redis.from_url(stack.redis_url)
    try:
        left = {key for key in raw.scan_iter("llmq:job:*", count=10_000)} - {key.encode() for key in before}
        if left:
            raw.delete(*left)
    finally:
        raw.close()


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_damaged_record_still_renders(stack: Stack, damage: dict[str, str | bytes | None]) -> None:
    fields = record(stack)
    job_id = str(fields["id"])
    for name, value in damage.items():
        if value is None:
            fields.pop(name, None)
        else:
            fields[name] = value
    store(stack, job_id, fields)
    finished = fields.get("status") in ("succeeded", "failed", "cancelled")
    with stack.client() as client:
        for params in ({}, {"wait": 0.1}):
            response = client.get(f"/v1/jobs/{job_id}", params=params)
            assert response.status_code == 200, response.text[:500]
            job = strict_json(response.text)
            assert job["id"] == job_id
            assert job["status"] in STATUSES
            for attempt in job.get("attempts", []):
                assert all(not isinstance(v, float) or math.isfinite(v) for v in attempt.values())
        # Its event history too: each frame valid JSON, up to its final state (or the first frames, if unfinished).
        with client.stream("GET", f"/v1/jobs/{job_id}/events", timeout=5) as response:
            assert response.status_code == 200
            frames = 0
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = strict_json(line.removeprefix("data: "))
                    frames += 1
                    if event.get("status") in ("succeeded", "failed", "cancelled") or not finished:
                        break
            assert frames >= 1


def test_a_damaged_event_stream_still_renders(stack: Stack) -> None:
    fields = record(stack)
    job_id = str(fields["id"])
    store(stack, job_id, fields)
    entries: list[dict[str, str]] = [
        {"e": '{"type":"state","status":"running","attempt":1,"at":1e400}'},
        {"e": "{not json"},
        {"x": "no event field"},
        {"e": '{"type":"state\\nevent: forged\\ndata: {}","status":"running","attempt":1,"at":1}'},
        {"e": '{"type":"delta","attempt":1,"index":0,"content":"\\ud800"}'},
        {"e": '{"type":"state","status":"failed","at":1700000001.0}'},
    ]
    raw = redis.Redis.from_url(stack.redis_url)
    try:
        for entry in entries:
            raw.xadd(redis_keys.job_events(job_id), entry)  # type: ignore[arg-type]
        raw.expire(redis_keys.job_events(job_id), 600)
    finally:
        raw.close()
    with stack.client() as client:
        response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200
    lines = response.text.splitlines()
    assert {line for line in lines if line.startswith("event: ")} <= {"event: state", "event: delta"}
    assert not [line for line in lines if line and not line.startswith(("id: ", "event: ", "data: "))]
    events = [strict_json(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]
    assert [event.get("status") for event in events] == ["queued", "running", "running", None, "failed"]
