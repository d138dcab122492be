"""The core path through real processes: API → Redis → Celery worker → mock proxy → Redis → API."""

from __future__ import annotations

import asyncio
from datetime import datetime

import httpx2
import pytest

from llmq.worker import redis_keys
from tests.stack import (
    CALLER_KEY,
    LISTED_MODEL,
    OTHER_KEY,
    MockProxy,
    Stack,
    chat,
    eventually,
    submit,
    wait_finished,
    wait_until,
)


def ts(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_submitted_job_succeeds_with_the_proxys_answer(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    with stack.client() as client:
        request = chat(model, "what is llmq?", temperature=0.3, vendor_extra={"keep": True})
        response = client.post("/v1/jobs", json={"request": request, "metadata": {"ticket": 42}})
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status"] == "queued"
        assert response.headers["location"] == f"/v1/jobs/{accepted['id']}"
        job = wait_finished(client, accepted["id"])
    assert job["status"] == "succeeded"
    assert job["result"]["choices"][0]["message"]["content"] == "Echo: what is llmq?"
    assert job["metadata"] == {"ticket": 42}
    assert [a["outcome"] for a in job["attempts"]] == ["ok"]
    calls = mock_proxy.calls(model)
    assert len(calls) == 1
    assert calls[0]["app_id"] == CALLER_KEY.split(":")[0]
    # The record has its TTL from the submission (a followed job's event stream gets its own from the finish:
    # test_live_progress).
    ttl = int(stack.env.get("LLMQ_RESULT_TTL_S", "259200"))
    assert 0 < stack.redis.ttl(redis_keys.job(accepted["id"])) <= ttl


def test_unknown_parameters_reach_the_proxy_untouched(stack: Stack, model: str) -> None:
    request = chat(model, temperature=0.3, vendor_extra={"keep": [1, 2]}, top_k=5)
    with stack.client() as client:
        job = submit(client, request)
    stored = stack.redis.hget(f"llmq:job:{job['id']}", "request")
    assert stored is not None
    import json

    assert json.loads(stored) == request


def test_a_record_is_kept_in_the_compact_encoding(stack: Stack, model: str) -> None:
    # hash-max-ziplist-value 1024 (ops/redis/redis.conf, devstack): the encrypted key and a short request
    # are over Redis's default 64 bytes, which would make every record a full hash table.
    with stack.client() as client:
        job = submit(client, chat(model, "x" * 300))
    record = redis_keys.job(job["id"])
    assert len(stack.redis.hget(record, "key_token") or "") > 64
    assert stack.redis.object("encoding", record) in ("listpack", "ziplist")  # Redis 7, Redis 6


def test_two_500s_then_success_takes_three_attempts(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 500}, {"kind": "status", "status": 500})
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model))["id"])
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["http_500", "http_500", "ok"]
    assert all(a["retry_in_s"] > 0 for a in job["attempts"][:2])
    assert len(mock_proxy.calls(model)) == 3


def test_429_retry_after_is_honoured(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 429, "headers": {"Retry-After": "2"}})
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model))["id"])
    assert job["status"] == "succeeded"
    first, second = job["attempts"]
    assert first["outcome"] == "http_429" and first["retry_in_s"] == 2
    first_end = ts(first["started_at"]) + first["duration_ms"] / 1000
    assert ts(second["started_at"]) - first_end >= 2.0


def test_401_from_the_proxy_fails_at_once_with_its_message(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    body = {"error": {"message": "app 7788 is not allowed to use this model", "type": "auth"}}
    mock_proxy.script(model, {"kind": "status", "status": 401, "body": body})
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model))["id"])
    assert job["status"] == "failed"
    assert len(job["attempts"]) == 1
    assert job["error"]["status_code"] == 401
    assert "app 7788 is not allowed to use this model" in job["error"]["message"]
    assert len(mock_proxy.calls(model)) == 1


def test_retries_stop_at_max_attempts_with_the_last_error(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, *[{"kind": "status", "status": 503}] * 3)
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model), max_attempts=2)["id"])
    assert job["status"] == "failed"
    assert [a["outcome"] for a in job["attempts"]] == ["http_503", "http_503"]
    assert job["error"]["type"] == "http_status" and job["error"]["status_code"] == 503
    assert len(mock_proxy.calls(model)) == 2


def test_garbage_2xx_is_retried(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "garbage"}, {"kind": "garbage"})
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model))["id"])
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["invalid_completion", "invalid_completion", "ok"]


def test_another_key_gets_404_everywhere(stack: Stack, model: str) -> None:
    with stack.client() as owner, stack.client(OTHER_KEY) as other:
        job_id = submit(owner, chat(model))["id"]
        assert other.get(f"/v1/jobs/{job_id}").status_code == 404
        assert other.get(f"/v1/jobs/{job_id}", params={"wait": 1}).status_code == 404
        assert other.delete(f"/v1/jobs/{job_id}").status_code == 404
        assert owner.get(f"/v1/jobs/{job_id}").status_code == 200


def test_metrics_carry_no_job_id_and_no_key(stack: Stack, model: str) -> None:
    with stack.client() as client:
        job_id = wait_finished(client, submit(client, chat(model))["id"])["id"]
        text = client.get("/metrics").text
    assert "llmq_jobs_submitted_total" in text and "llmq_queue_depth" in text
    assert job_id not in text
    assert CALLER_KEY.split(":")[1] not in text


def test_worker_metrics_count_calls_and_tokens(stack: Stack, mock_proxy: MockProxy) -> None:
    model = LISTED_MODEL  # listed in LLMQ_METRICS_MODELS: any other model is counted as "other"
    mock_proxy.script(model, {"kind": "status", "status": 500})
    with stack.client() as client:
        wait_finished(client, submit(client, chat(model, "count these words"))["id"])
    text = httpx2.get(f"http://127.0.0.1:{stack.env['LLMQ_WORKER_METRICS_PORT']}/metrics", timeout=5).text
    labels = f'model="{model}"'
    assert f'llmq_upstream_request_duration_seconds_count{{{labels},status_code="500"}} 1.0' in text
    assert f'llmq_upstream_request_duration_seconds_count{{{labels},status_code="200"}} 1.0' in text
    assert f'llmq_tokens_total{{app_id="7788",kind="completion",{labels}}}' in text  # labels sorted
    assert 'llmq_retries_total{reason="http_500"}' in text
    assert CALLER_KEY.split(":")[1] not in text


def test_idempotency_key_returns_the_first_job(stack: Stack, model: str) -> None:
    with stack.client() as client, stack.client(OTHER_KEY) as other:
        headers = {"Idempotency-Key": f"order-{model}"}
        first = client.post("/v1/jobs", json={"request": chat(model)}, headers=headers)
        again = client.post("/v1/jobs", json={"request": chat(model)}, headers=headers)
        someone_else = other.post("/v1/jobs", json={"request": chat(model)}, headers=headers)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert someone_else.status_code == 202 and someone_else.json()["id"] != first.json()["id"]


def test_wait_returns_when_the_job_finishes(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 1500})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 20}).json()
    assert job["status"] == "succeeded"


def test_wait_times_out_with_the_current_state(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 4000})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        job = client.get(f"/v1/jobs/{job_id}", params={"wait": 0.5}).json()
        assert job["status"] in ("queued", "running")
        assert wait_finished(client, job_id)["status"] == "succeeded"


@pytest.mark.parametrize("priority", ["high", "low"])
def test_priorities_are_accepted_and_run(stack: Stack, model: str, priority: str) -> None:
    with stack.client() as client:
        job = wait_finished(client, submit(client, chat(model), priority=priority)["id"])
    assert job["status"] == "succeeded" and job["priority"] == priority


def test_concurrent_single_posts_each_get_their_own_job(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    """Submissions that arrive together share Redis round trips; each still answers for its own job."""

    async def post_all() -> list[httpx2.Response]:
        headers = {"Authorization": f"Bearer {CALLER_KEY}"}
        async with httpx2.AsyncClient(base_url=stack.base_url, headers=headers, timeout=60) as client:
            return await asyncio.gather(*(
                client.post("/v1/jobs", json={"request": chat(model, f"n{i}"), "metadata": {"i": i}},
                            headers={"Idempotency-Key": f"{model}-{i % 30}"})
                for i in range(60)
            ))

    responses = asyncio.run(post_all())
    # Per key, one request creates the job and the other replays it, even inside one group.
    assert sorted(r.status_code for r in responses) == [200] * 30 + [202] * 30
    by_key: dict[int, set[str]] = {}
    for i, response in enumerate(responses):
        by_key.setdefault(i % 30, set()).add(response.json()["id"])
    # One job per idempotency key, however the two requests for it were grouped.
    assert all(len(ids) == 1 for ids in by_key.values()) and len(by_key) == 30
    with stack.client() as client:
        jobs = [wait_finished(client, next(iter(ids))) for ids in by_key.values()]
    assert all(job["status"] == "succeeded" for job in jobs)
    assert sorted(job["metadata"]["i"] % 30 for job in jobs) == list(range(30))
    assert all(job["result"]["choices"][0]["message"]["content"] == f"Echo: n{job['metadata']['i']}" for job in jobs)
    assert len(mock_proxy.calls(model)) == 30


@pytest.mark.parametrize("answer", [{"kind": "ok", "latency_ms": 2000},
                                    {"kind": "status", "status": 503, "latency_ms": 2000}])
def test_a_job_cancelled_mid_call_shows_the_call_as_a_cancelled_attempt(
    stack: Stack, mock_proxy: MockProxy, model: str, answer: dict[str, object]
) -> None:
    mock_proxy.script(model, answer)
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        eventually(lambda: mock_proxy.calls(model), 10, "the call to be in flight at the proxy", interval_s=0.02)
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        job = wait_until(client, job_id, lambda job: job["attempts"], timeout_s=15)
    assert job["status"] == "cancelled" and "result" not in job
    (attempt,) = job["attempts"]
    assert attempt["n"] == 1 and attempt["outcome"] == "cancelled"
    # The cancel aborted the call before the proxy answered, whatever that answer would have been.
    assert "status_code" not in attempt and "aborted" in attempt["message"]
    assert len(mock_proxy.calls(model)) == 1
