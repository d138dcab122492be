"""Quotas of unfinished jobs per app id, a shared one for app ids the proxy has not vouched for, and keys the proxy
rejected refused for a while: on real processes, with limits small enough to reach."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx2
import pytest

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.stack import MockProxy, Stack, chat, eventually, submit, unfinished_jobs, wait_finished

APP_MAX = 5
UNKNOWN_MAX = 3
LIMITS = {"LLMQ_APP_MAX_UNFINISHED": str(APP_MAX), "LLMQ_UNKNOWN_APPS_MAX_UNFINISHED": str(UNKNOWN_MAX),
          "LLMQ_REJECTED_KEY_BLOCK_S": "3"}


@pytest.fixture
def api_only(
    redis_server: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack]
) -> Iterator[Stack]:
    """No worker: jobs stay queued, so they count against their quota until cancelled."""
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    stack = make_stack(url, mock_proxy.url, f"quotas-{time.monotonic_ns()}", **LIMITS).start_api()
    stack.redis.flushdb()
    yield stack
    stack.redis.flushdb()


@pytest.fixture(scope="module")
def with_worker(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: object) -> Iterator[Stack]:
    url = redis_server.url.rsplit("/", 1)[0] + "/14"
    stack = Stack(url, mock_proxy.url, log_dir / "quotas-worker", **LIMITS)  # type: ignore[operator]
    stack.redis.flushdb()
    try:
        stack.start_api()
        stack.start_worker()
        yield stack
    finally:
        stack.stop()


def assert_over_quota(response: httpx2.Response, setting: str) -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["type"] == "quota_exceeded" and setting in error["message"]
    assert int(response.headers["Retry-After"]) > 0


def test_app_ids_not_known_yet_share_one_small_quota(api_only: Stack, model: str) -> None:
    with api_only.client("5001:key-a") as first, api_only.client("5002:key-b") as second:
        submit(first, chat(model))
        submit(first, chat(model))
        mine = submit(second, chat(model))
        over = second.post("/v1/jobs", json={"request": chat(model)})
        assert_over_quota(over, "LLMQ_UNKNOWN_APPS_MAX_UNFINISHED")
        assert "'5002'" in over.json()["error"]["message"]
        # A finished job (here cancelled) leaves the quota at once.
        assert second.delete(f"/v1/jobs/{mine['id']}").json()["status"] == "cancelled"
        submit(second, chat(model))
    assert api_only.redis.zcard(redis_keys.UNKNOWN_APPS_UNFINISHED) == UNKNOWN_MAX


def test_a_known_app_id_has_its_own_quota_batch_lines_included(api_only: Stack, model: str) -> None:
    api_only.redis.sadd(redis_keys.KNOWN_APPS, "5003")
    with api_only.client("5003:key-c") as client:
        too_many = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model)}] * (APP_MAX + 1)})
        assert_over_quota(too_many, "LLMQ_APP_MAX_UNFINISHED")
        assert unfinished_jobs(api_only.redis) == 0  # none of the batch was recorded
        batch = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model)}] * APP_MAX}).json()
        assert batch["accepted"] == APP_MAX
        assert_over_quota(client.post("/v1/jobs", json={"request": chat(model)}), "LLMQ_APP_MAX_UNFINISHED")
        client.delete(f"/v1/jobs/{batch['jobs'][0]['id']}")
        submit(client, chat(model))
    # The shared quota of unknown app ids is untouched.
    assert api_only.redis.zcard(redis_keys.UNKNOWN_APPS_UNFINISHED) == 0
    assert api_only.redis.zcard(redis_keys.app_unfinished("5003")) == APP_MAX
    # /metrics counts every partition of the index of unfinished jobs (no worker here: nothing moves meanwhile).
    unfinished = unfinished_jobs(api_only.redis)
    assert unfinished >= APP_MAX
    with api_only.client() as client:
        assert f"\nllmq_unfinished_jobs {float(unfinished)}\n" in client.get("/metrics").text


def test_a_quota_heals_from_entries_whose_records_are_gone(api_only: Stack, model: str) -> None:
    """Entries older than a record's TTL name records that expired unfinished: they no longer count."""
    api_only.redis.sadd(redis_keys.KNOWN_APPS, "5004")
    long_ago = time.time() - 4 * 24 * 3600
    api_only.redis.zadd(redis_keys.app_unfinished("5004"), {f"job_gone{n}": long_ago for n in range(APP_MAX)})
    with api_only.client("5004:key-d") as client:
        submit(client, chat(model))
    assert api_only.redis.zcard(redis_keys.app_unfinished("5004")) == 1


def test_an_app_id_becomes_known_once_the_proxy_accepts_its_key(
    with_worker: Stack, mock_proxy: MockProxy, model: str
) -> None:
    with with_worker.client("6001:good-key") as client:
        assert wait_finished(client, submit(client, chat(model))["id"])["status"] == "succeeded"
    assert with_worker.redis.sismember(redis_keys.KNOWN_APPS, "6001")
    assert with_worker.redis.zcard(redis_keys.UNKNOWN_APPS_UNFINISHED) == 0


def test_a_key_the_proxy_rejected_is_refused_for_a_while(
    with_worker: Stack, mock_proxy: MockProxy, model: str
) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 401})
    with with_worker.client("6002:revoked-key") as client, with_worker.client("6002:other-key") as other:
        job = wait_finished(client, submit(client, chat(model))["id"])
        assert job["status"] == "failed"
        # Refused within a second (LLMQ's API looks the marker up at most once a second per caller).
        refused = eventually(lambda: (r := client.post("/v1/jobs", json={"request": chat(model)})).status_code == 401
                             and r, 5, "the rejected key to be refused")
        assert "rejected this key" in refused.json()["error"]["message"]
        assert 0 < int(refused.headers["Retry-After"]) <= 3
        assert other.post("/v1/jobs", json={"request": chat(model)}).status_code == 202  # another key of the app
        eventually(lambda: client.post("/v1/jobs", json={"request": chat(model)}).status_code == 202, 10,
                   "the key to be accepted again after LLMQ_REJECTED_KEY_BLOCK_S")
    # Recorded by the key's fingerprint, never the key.
    assert not [key for key in with_worker.redis.keys("*") if "revoked" in key]


def test_in_a_group_of_single_posts_only_the_caller_over_its_quota_is_refused(api_only: Stack, model: str) -> None:
    """Concurrent POSTs share one script call (api.group_commit); a quota refuses its own caller's jobs only."""
    api_only.redis.sadd(redis_keys.KNOWN_APPS, "5005", "5006")
    with api_only.client("5005:key-e") as full:
        full.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model)}] * APP_MAX}).raise_for_status()
    answers: dict[str, list[int]] = {"5005:key-e": [], "5006:key-f": []}
    lock = threading.Lock()

    def post(key: str) -> None:
        with api_only.client(key) as client:
            status = client.post("/v1/jobs", json={"request": chat(model)}).status_code
        with lock:
            answers[key].append(status)

    threads = [threading.Thread(target=post, args=(key,)) for _ in range(APP_MAX - 1) for key in answers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert answers == {"5005:key-e": [429] * (APP_MAX - 1), "5006:key-f": [202] * (APP_MAX - 1)}
