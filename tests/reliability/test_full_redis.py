"""A full Redis (`maxmemory` reached under `noeviction`): JSON 503s, a failing /readyz, no half-recorded batch,
and a worker that keeps every message it would have taken."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator

import httpx2
import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.secrets.key_vault import vault_for
from tests.redis_memory import filled, limited
from tests.stack import (
    CALLER_KEY,
    MockProxy,
    Stack,
    chat,
    eventually,
    submit,
    unfinished_jobs,
    wait_finished,
    wait_status,
)

QUEUE = redis_keys.QUEUE_BY_PRIORITY["normal"]


def queued_job_ids(stack: Stack) -> list[str]:
    """The job ids of the messages waiting in QUEUE (a Celery message's body is its base64 JSON [args, ...])."""
    messages = [json.loads(raw) for raw in stack.redis.lrange(QUEUE, 0, -1)]
    return [json.loads(base64.b64decode(message["body"]))[0][0] for message in messages]


@pytest.fixture(scope="module")
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: its limit changes touch no other test's."""
    with RedisServer(appendonly=False) as server:
        yield server


@pytest.fixture
def api_only(own_redis: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack]) -> Iterator[Stack]:
    """An API with no worker, so jobs stay queued; its database emptied after the test."""
    stack = make_stack(own_redis.url, mock_proxy.url, f"full-redis-{time.monotonic_ns()}").start_api()
    yield stack
    stack.redis.flushdb()


def recorded_jobs(stack: Stack) -> int:
    return unfinished_jobs(stack.redis)


def queued_messages(stack: Stack) -> int:
    """Messages waiting for a worker: in QUEUE, or in the caller's app id's ready list (fair turns: an app id's jobs
    past its first few wait there)."""
    app_id = CALLER_KEY.split(":", 1)[0]
    return stack.redis.llen(QUEUE) + stack.redis.llen(redis_keys.fair_ready(redis_keys.name_part(app_id), QUEUE))


def assert_unavailable(response: httpx2.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["type"] == "unavailable"
    assert int(response.headers["Retry-After"]) > 0


def test_every_route_that_writes_answers_json_503_and_readyz_fails(api_only: Stack, model: str) -> None:
    with api_only.client() as client:
        job = submit(client, chat(model))
        with filled(api_only.redis):
            assert "full" in client.post("/v1/jobs", json={"request": chat(model)}).json()["error"]["message"]
            assert_unavailable(client.post("/v1/jobs", json={"request": chat(model)}))
            assert_unavailable(client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model)}] * 3}))
            assert_unavailable(client.delete(f"/v1/jobs/{job['id']}"))
            assert_unavailable(client.get(f"/v1/jobs/{job['id']}", params={"wait": 1}))
            assert_unavailable(client.get(f"/v1/jobs/{job['id']}/events"))
            # Reading needs no memory.
            assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and "full" in ready.json()["checks"]["redis_memory"]
        eventually(lambda: client.get("/readyz").status_code == 200, 5, "/readyz to pass once Redis has room")
        assert client.delete(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"
    assert recorded_jobs(api_only) == 0
    log = api_only.log_text()
    assert '"status_code": 500' not in log and "Traceback" not in log


def test_a_batch_that_cannot_fit_records_none_of_its_jobs(api_only: Stack, model: str) -> None:
    """200 jobs of 2 KB each against 150 KB of room: all of them or none, never the first half."""
    text = "x" * 2000
    jobs = [{"request": chat(model, f"{n} {text}")} for n in range(200)]
    with api_only.client() as client, limited(api_only.redis, 150 * 1024):
        response = client.post("/v1/jobs/batch", json={"jobs": jobs})
    assert_unavailable(response)
    assert recorded_jobs(api_only) == 0 and queued_messages(api_only) == 0


def _poison(stack: Stack, idempotency_key: str) -> None:
    """Make one job's idempotency key unreadable (a key of the wrong type): its script fails on it."""
    owner = vault_for(stack.env["LLMQ_SECRET"]).owner(CALLER_KEY)
    stack.redis.hset(redis_keys.idempotency(owner, idempotency_key), "not", "a string")


def test_a_batch_whose_script_fails_half_way_records_none(api_only: Stack, model: str) -> None:
    _poison(api_only, "poisoned")
    jobs = [{"request": chat(model, str(n))} for n in range(200)]
    jobs[150]["idempotency_key"] = "poisoned"
    with api_only.client() as client:
        assert_unavailable(client.post("/v1/jobs/batch", json={"jobs": jobs}))
    assert recorded_jobs(api_only) == 0 and queued_messages(api_only) == 0


def test_single_posts_committed_together_are_all_recorded_or_none(api_only: Stack, model: str) -> None:
    """Concurrent POSTs share one script call (api.group_commit): one bad job fails its whole group, cleanly."""
    _poison(api_only, "poisoned")
    answers: list[int] = []
    lock = threading.Lock()

    def post(n: int) -> None:
        headers = {"Idempotency-Key": "poisoned"} if n == 20 else {}
        with api_only.client() as client:
            status = client.post("/v1/jobs", json={"request": chat(model, str(n))}, headers=headers).status_code
        with lock:
            answers.append(status)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert set(answers) <= {202, 503} and len(answers) == 40
    assert answers.count(503) >= 1
    assert recorded_jobs(api_only) == answers.count(202) == queued_messages(api_only)


def test_a_worker_keeps_running_through_a_full_redis_and_loses_no_message(
    own_redis: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str,
    record_figures: Callable[..., None],
) -> None:
    stack = make_stack(own_redis.url, mock_proxy.url, "full-redis-worker", LLMQ_WORKER_CONCURRENCY="1")
    stack.start_api()
    worker = stack.start_worker()
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 3000}, {"kind": "ok"})
    try:
        with stack.client() as client:
            first = submit(client, chat(model, "first"))
            wait_status(client, first["id"], "running")
            second = submit(client, chat(model, "second"))
            # The worker's one slot is taken: the second job's message waits in its queue.
            assert stack.redis.llen(QUEUE) == 1
            client.delete(f"/v1/jobs/{first['id']}")  # its call ends without a write to make
            with filled(stack.redis):
                # The first call ends and frees the slot while Redis refuses every write.
                eventually(lambda: any(sign in stack.log_text() for sign in ("Redis is full", "Unrecoverable")),
                           15, "the worker to meet the full Redis")
                time.sleep(1.5)
                assert worker.alive, "the worker stopped on a full Redis"
                # The cancelled call's message may come back to the queue too (its attempt could not be recorded);
                # the second job's must still be there, untaken.
                assert second["id"] in queued_job_ids(stack), "the message was taken while Redis could not record it"
            freed = time.monotonic()
            job = wait_finished(client, second["id"], timeout_s=30)
            ran_after_s = time.monotonic() - freed
        assert job["status"] == "succeeded"
        record_figures("full Redis, worker", lost=0, worker_alive=True,
                       job_done_after_memory_freed_s=round(ran_after_s, 2))
        assert "Unrecoverable error" not in stack.log_text()
    finally:
        stack.redis.flushdb()


def test_readyz_tells_how_close_redis_is_to_full(api_only: Stack) -> None:
    with api_only.client() as client:
        checks = client.get("/readyz").json()["checks"]
    assert checks["redis_memory"].startswith("ok: ") and "MB used" in checks["redis_memory"]


def test_a_redis_write_refused_for_memory_is_an_out_of_memory_error(own_redis: RedisServer) -> None:
    """What redis-py raises on a full Redis, which the API maps to 503 (api.errors)."""
    client = redis.Redis.from_url(own_redis.url)
    with filled(client), pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", "x" * 1024)
    client.close()


def test_above_the_high_water_mark_new_jobs_wait_and_running_ones_finish(
    own_redis: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str
) -> None:
    stack = make_stack(own_redis.url, mock_proxy.url, "high-water", LLMQ_REDIS_HIGH_WATER="0.5")
    stack.start_api()
    stack.start_worker()
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 2500})
    try:
        with stack.client() as client:
            running = submit(client, chat(model, "long"))
            wait_status(client, running["id"], "running")
            used = int(stack.redis.info("memory")["used_memory"])
            with limited(stack.redis, int(used * 0.45)):  # about 70 % of maxmemory used
                ready = client.get("/readyz")  # also refreshes the API's reading
                assert ready.status_code == 200 and ready.json()["checks"]["redis_memory"].startswith("high")
                refused = client.post("/v1/jobs", json={"request": chat(model)})
                assert_unavailable(refused)
                assert "LLMQ_REDIS_HIGH_WATER" in refused.json()["error"]["message"]
                # The margin is for the jobs already running: this one records its result.
                assert wait_finished(client, running["id"])["status"] == "succeeded"
            client.get("/readyz")
            assert client.post("/v1/jobs", json={"request": chat(model)}).status_code == 202
            stack.wait_all_finished(30)
    finally:
        stack.redis.flushdb()
