"""Last-Event-ID is checked as Redis checks a stream id: an id Redis would refuse is a 400, never a cut stream."""

from __future__ import annotations

import pytest

from tests.stack import Stack, chat, submit, wait_finished

U64_MAX = 2**64 - 1

ACCEPTED = [
    "0-0", "0-1", "0-3", f"0-{U64_MAX}", "1-0", "1700000000000-0", " 1700000000000-5 ", "00001-00",
    f"{U64_MAX}-{U64_MAX - 1}", f"{U64_MAX - 1}-{U64_MAX}",
]
REFUSED = [
    f"{U64_MAX}-{U64_MAX}",  # the largest id: Redis has nothing after it and refuses to look
    f"{U64_MAX + 1}-0", f"0-{U64_MAX + 1}", "9" * 21 + "-0", "-1-0", "1--1", "1-", "-1", "1", "-", "+", "$", ">",
    "abc", "1-0-0", "1.5-0", "+1-0", "1-+0", "0x1-0", "1 -0", "1e3-0", "١-٠", "1-0" + "0" * 100, "9" * 10_000,
]


@pytest.fixture(scope="module")
def finished_job(stack: Stack) -> str:
    with stack.client() as client:
        job_id = submit(client, chat("event-id-model"))["id"]
        assert wait_finished(client, job_id)["status"] == "succeeded"
    return job_id


def frames(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize("event_id", ACCEPTED)
def test_ids_redis_accepts_resume_the_stream(stack: Stack, finished_job: str, event_id: str) -> None:
    with stack.client() as client:
        for request in ({"headers": {"Last-Event-ID": event_id}}, {"params": {"last_event_id": event_id}}):
            if "headers" in request and event_id != event_id.strip():
                continue  # an HTTP client trims a header; the query string keeps the spaces
            response = client.get(f"/v1/jobs/{finished_job}/events", **request)  # type: ignore[arg-type]
            assert response.status_code == 200, response.text[:300]
            if event_id.strip() in ("0-0", "0-1"):  # before the told history's end: it ends with the final state
                assert '"status":"succeeded"' in frames(response.text)[-1]


@pytest.mark.parametrize("event_id", REFUSED)
def test_ids_redis_refuses_are_400(stack: Stack, finished_job: str, event_id: str) -> None:
    with stack.client() as client:
        for request in ({"headers": {"Last-Event-ID": event_id}}, {"params": {"last_event_id": event_id}}):
            if "headers" in request and not event_id.isascii():
                continue  # a header carries ASCII; the query string can carry the rest
            response = client.get(f"/v1/jobs/{finished_job}/events", **request)  # type: ignore[arg-type]
            assert response.status_code == 400, (event_id, response.status_code, response.text[:300])
            message = response.json()["error"]["message"]
            assert "Last-Event-ID" in message and len(message) < 300
