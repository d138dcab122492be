"""Streaming jobs and live progress through real processes: stored results, /events, and long-polling."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx2

from llmq.worker import redis_keys
from tests.stack import OTHER_KEY, MockProxy, Stack, chat, submit, wait_finished, wait_status

TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
# Keep-alives would reset a read timeout forever, so reading a stream also has a deadline.
STREAM_DEADLINE_S = 30.0


@dataclass
class SseEvent:
    id: str | None
    event: str
    data: dict[str, Any]
    received_at: float


def read_events(client: httpx2.Client, job_id: str, **headers: str) -> list[SseEvent]:
    """Every event of one /events connection, which must end by itself before the deadline."""
    deadline = time.monotonic() + STREAM_DEADLINE_S
    events: list[SseEvent] = []
    fields: dict[str, str] = {}
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                       timeout=httpx2.Timeout(10, read=20)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        for line in response.iter_lines():
            assert time.monotonic() < deadline, "the event stream did not end in time"
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                events.append(SseEvent(fields.get("id"), fields.get("event", "message"),
                                       json.loads(fields["data"]), time.time()))
            fields = {}
    assert not fields, "the stream ended in the middle of an event"
    return events


def kinds(events: list[SseEvent]) -> list[str]:
    """`queued`, `running`, ... for state events and `delta` for deltas, in order."""
    return [e.data["status"] if e.event == "state" else e.event for e in events]


def assembled_text(events: list[SseEvent]) -> str:
    """The text a live client shows: deltas of the latest attempt, reset when a new attempt starts."""
    text = ""
    attempt = 0
    for e in events:
        if e.event == "state" and e.data["status"] == "running" and e.data["attempt"] > attempt:
            attempt, text = e.data["attempt"], ""
        elif e.event == "delta":
            assert e.data["attempt"] == attempt
            text += e.data.get("content", "")
    return text


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def without_created(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != "created"}


def test_streamed_result_equals_the_plain_one(stack: Stack, model: str) -> None:
    text = "the same answer either way"
    with stack.client() as client:
        plain = wait_finished(client, submit(client, chat(model, text))["id"])
        streamed = wait_finished(client, submit(client, chat(
            model, text, stream=True, stream_options={"include_usage": True}))["id"])
    assert plain["status"] == streamed["status"] == "succeeded"
    assert streamed["stream"] is True and plain["stream"] is False
    assert without_created(streamed["result"]) == without_created(plain["result"])
    assert streamed["result"]["choices"][0]["message"]["content"] == f"Echo: {text}"
    assert streamed["result"]["usage"]["total_tokens"] > 0


def test_streamed_tool_call_fragments_assemble_into_json(stack: Stack, model: str) -> None:
    with stack.client() as client:
        request = chat(model, "find llmq", tools=TOOLS)
        plain = wait_finished(client, submit(client, request)["id"])
        streamed = wait_finished(client, submit(client, {**request, "stream": True})["id"])
    assert streamed["status"] == "succeeded"
    expected = plain["result"]["choices"][0]
    choice = streamed["result"]["choices"][0]
    assert choice["finish_reason"] == expected["finish_reason"] == "tool_calls"
    call, expected_call = choice["message"]["tool_calls"][0], expected["message"]["tool_calls"][0]
    assert json.loads(call["function"]["arguments"]) == json.loads(expected_call["function"]["arguments"])
    assert json.loads(call["function"]["arguments"]) == {"echo": "find llmq", "n": 1}
    assert (call["id"], call["function"]["name"]) == (expected_call["id"], "lookup")
    assert choice["message"]["content"] is None


def test_event_stream_delivers_every_delta_and_ends(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 500})
    with stack.client() as client:
        job_id = submit(client, chat(model, "tell me how live progress streams work", stream=True))["id"]
        events = read_events(client, job_id)
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded"
    order = kinds(events)
    assert order[:2] == ["queued", "running"] and order[-1] == "succeeded"
    assert set(order[2:-1]) == {"delta"} and len(order) > 5
    deltas = [e.data for e in events if e.event == "delta"]
    content = job["result"]["choices"][0]["message"]["content"]
    assert "".join(d.get("content", "") for d in deltas) == content == assembled_text(events)
    assert all(d["attempt"] == 1 and d["index"] == 0 for d in deltas)
    assert deltas[-1]["finish_reason"] == "stop"
    # Connected while the job was still running: the later events came live, not as history.
    assert events[0].received_at < ts(job["finished_at"])
    ids = [e.id for e in events]
    assert all(ids) and len(set(ids)) == len(ids)


def test_late_client_gets_history_and_can_resume(stack: Stack, model: str) -> None:
    with stack.client() as client:
        job_id = submit(client, chat(model, "late but complete", stream=True))["id"]
        wait_finished(client, job_id)
        events = read_events(client, job_id)
        running = next(e for e in events if e.data.get("status") == "running")
        resumed = read_events(client, job_id, **{"Last-Event-ID": running.id or ""})
        by_query = client.get(f"/v1/jobs/{job_id}/events", params={"last_event_id": running.id})
        after_end = read_events(client, job_id, **{"Last-Event-ID": events[-1].id or ""})
    assert kinds(events)[:2] == ["queued", "running"] and kinds(events)[-1] == "succeeded"
    assert assembled_text(events) == "Echo: late but complete"
    after_running = events[events.index(running) + 1:]
    assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in after_running]
    assert by_query.status_code == 200 and by_query.text.count("event: ") == len(after_running)
    assert after_end == []


def test_a_job_nobody_follows_writes_no_stream_and_its_record_tells_the_history(
        stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 500}, {"kind": "ok"})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        job = wait_status(client, job_id, "succeeded")  # plain reads: nobody follows the job
        assert not stack.redis.exists(redis_keys.job_events(job_id))
        events = read_events(client, job_id)
        resumed = read_events(client, job_id, **{"Last-Event-ID": "0-3"})
    assert kinds(events) == ["queued", "running", "retrying", "running", "succeeded"]
    assert [e.id for e in events] == ["0-1", "0-2", "0-3", "0-4", "0-5"]
    assert [e.data.get("attempt") for e in events] == [None, 1, 1, 2, None]
    first, second = job["attempts"]
    told_at = [e.data["at"] for e in events]
    shown_at = [job["created_at"], first["started_at"], None, second["started_at"], job["finished_at"]]
    assert all(abs(at - ts(shown)) < 1e-3 for at, shown in zip(told_at, shown_at, strict=True) if shown)
    assert told_at == sorted(told_at)
    assert events[2].data["reason"] == "http_500" and events[2].data["retry_in_s"] == first["retry_in_s"]
    assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in events[3:]]
    assert not stack.redis.exists(redis_keys.job_events(job_id)), "reading a finished job's history writes nothing"


def test_a_job_followed_midway_gets_the_rest_streamed_and_one_history(
        stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 500, "latency_ms": 1000}, {"kind": "ok", "latency_ms": 300})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        wait_status(client, job_id, "running")
        live = read_events(client, job_id)  # from the first attempt's call to the end
        job = client.get(f"/v1/jobs/{job_id}").json()
        later = read_events(client, job_id)
        resumed = read_events(client, job_id, **{"Last-Event-ID": "0-2"})
    assert job["status"] == "succeeded"
    assert kinds(live) == ["queued", "running", "retrying", "running", "succeeded"]
    # Told by the record up to the watch, streamed after it: stream ids are Redis's, above every told one.
    assert [e.id for e in live[:2]] == ["0-1", "0-2"]
    assert all(e.id and not e.id.startswith("0-") for e in live[2:])
    assert live[2].received_at < ts(job["finished_at"]), "the retry came live"
    assert [(e.id, e.data) for e in later] == [(e.id, e.data) for e in live]
    assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in live[2:]]
    ttl = int(stack.env.get("LLMQ_RESULT_TTL_S", "259200"))
    assert 0 < stack.redis.ttl(redis_keys.job_events(job_id)) <= ttl


def test_wait_answers_within_200ms_of_the_finish(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 1500})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
        returned_at = time.time()
    assert job["status"] == "succeeded"
    assert 0 <= returned_at - ts(job["finished_at"]) < 0.2


def test_cut_stream_is_retried_and_stored_complete(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "stream_cut"})
    text = "a stream cut short the first time"
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model, text, stream=True))["id"])
        events = read_events(client, job["id"])
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["stream_incomplete", "ok"]
    choice = job["result"]["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["content"] == f"Echo: {text}"
    assert kinds(events)[:2] == ["queued", "running"] and kinds(events)[-1] == "succeeded"
    assert "retrying" in kinds(events)
    # The cut attempt's partial deltas were sent too; a client resetting per attempt shows the final text.
    assert {e.data["attempt"] for e in events if e.event == "delta"} == {1, 2}
    assert assembled_text(events) == f"Echo: {text}"
    assert len(mock_proxy.calls(model)) == 2


def test_events_keep_other_keys_out_and_reject_bad_ids(stack: Stack, model: str) -> None:
    with stack.client() as owner, stack.client(OTHER_KEY) as other:
        job_id = submit(owner, chat(model))["id"]
        assert other.get(f"/v1/jobs/{job_id}/events").status_code == 404
        assert other.get(f"/v1/jobs/{job_id}", params={"wait": 1}).status_code == 404
        assert stack.redis.hget(redis_keys.job(job_id), "watched") is None, "another key's read marks nothing"
        assert owner.get("/v1/jobs/job_AAAAAAAAAAAAAAAAAAAAAA/events").status_code == 404
        for bad in ("not-an-id", "12", "1-2-3", "99999999999999999999999-0"):
            response = owner.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
            assert response.status_code == 400, bad
            assert response.json()["error"]["type"] == "invalid_request"
        by_query = owner.get(f"/v1/jobs/{job_id}/events", params={"last_event_id": "oops"})
        assert by_query.status_code == 400
        wait_finished(owner, job_id)
