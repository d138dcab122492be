"""What a caller gets for its finished job, case by case, and how the relay writes its stream."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmq.api.openai.answers import finished_answer, still_running
from llmq.api.openai.relay import completion_as_chunk, data_frame, error_frame
from llmq.worker.jobs.record import dumps

JOB_ID = "job_" + "a" * 22
ATTEMPT = {"n": 1, "outcome": "x"}


def record(status: str, error: dict[str, Any] | None = None, attempts: int = 1, **fields: str) -> dict[str, str]:
    out = {"id": JOB_ID, "status": status, "attempts": "\n".join(dumps({**ATTEMPT, "n": n + 1})
                                                                 for n in range(attempts)), **fields}
    if error is not None:
        out["error"] = dumps({"status_code": None, "body_excerpt": None, **error})
    return out


def error_of(body: bytes) -> dict[str, Any]:
    payload = json.loads(body)
    assert set(payload) == {"error"} and set(payload["error"]) == {"message", "type", "param", "code"}
    return payload["error"]  # type: ignore[no-any-return]


@pytest.mark.parametrize(("fields", "status", "code", "mentions"), [
    (record("failed", {"type": "http_status", "message": "HTTP 500", "status_code": 500}, 5), 502, "upstream_500",
     ["500", "after 5 attempts", JOB_ID]),
    (record("failed", {"type": "http_status", "message": "HTTP 503", "status_code": 503}, 1), 502, "upstream_503",
     ["503", "after 1 attempt"]),
    (record("failed", {"type": "timeout", "message": "no answer in time"}, 3), 504, "upstream_timeout",
     ["did not answer in time"]),
    (record("failed", {"type": "connection_error", "message": "reset"}), 502, "connection_error", ["reset"]),
    (record("failed", {"type": "invalid_completion", "message": "not JSON"}), 502, "invalid_completion",
     ["not JSON"]),
    (record("failed", {"type": "worker_lost", "message": "stopped"}), 502, "worker_lost", ["stopped"]),
    (record("cancelled"), 409, "job_cancelled", ["cancelled"]),
    (record("expired"), 504, "deadline_expired", ["deadline"]),
])
def test_a_failed_job_is_an_openai_error(fields: dict[str, str], status: int, code: str, mentions: list[str]) -> None:
    response = finished_answer(fields)
    assert response.status_code == status
    assert response.headers["x-request-id"] == JOB_ID and response.headers["x-should-retry"] == "false"
    error = error_of(response.body)
    assert error["code"] == code
    assert all(word in error["message"] for word in mentions)


def test_success_is_the_proxys_body_as_received() -> None:
    body = '{"id": "chatcmpl-1",  "choices": [{"index": 0}], "vendor": "kept as sent"}'
    response = finished_answer(record("succeeded", result=body))
    assert (response.status_code, response.body) == (200, body.encode())
    assert response.headers["x-request-id"] == JOB_ID


@pytest.mark.parametrize(("error_body", "media_type"), [
    ('{"error": {"message": "too long", "code": "context_length_exceeded"}}', "application/json"),
    ("<html>bad request</html>", "text/plain; charset=utf-8"),
])
def test_the_proxys_final_4xx_is_its_status_and_whole_body(error_body: str, media_type: str) -> None:
    fields = record("failed", {"type": "http_status", "message": "HTTP 400", "status_code": 400,
                               "body_excerpt": error_body[:5]}, error_body=error_body)
    response = finished_answer(fields)
    assert (response.status_code, response.body) == (400, error_body.encode())
    assert response.headers["content-type"] == media_type and response.headers["x-should-retry"] == "false"


def test_a_job_past_the_wait_is_a_504_naming_it() -> None:
    response = still_running(JOB_ID, 2.5).response()
    assert response.status_code == 504 and response.headers["x-request-id"] == JOB_ID
    assert f"GET /v1/jobs/{JOB_ID}" in error_of(response.body)["message"]


@pytest.mark.parametrize(("payload", "frame"), [
    ('{"id":"c","choices":[]}', b'data: {"id":"c","choices":[]}\n\n'),
    ("line one\nline two", b"data: line one\ndata: line two\n\n"),
])
def test_data_frames_carry_the_payload_verbatim(payload: str, frame: bytes) -> None:
    assert data_frame(payload) == frame


def test_error_frame_is_one_data_object_with_an_error_key() -> None:
    frame = error_frame("broke off", "stream_interrupted")
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
    assert json.loads(frame[6:]) == {"error": {"message": "broke off", "type": "upstream_error", "param": None,
                                               "code": "stream_interrupted"}}


def test_an_answer_in_one_piece_becomes_one_chunk() -> None:
    completion = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m", "usage": {"total_tokens": 3},
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
    chunk = json.loads(completion_as_chunk(json.dumps(completion)))
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] == {"total_tokens": 3}
    assert chunk["choices"] == [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]
