"""The caller's key appears in no Redis value, no broker message, no log line and no Flower answer."""

from __future__ import annotations

from pathlib import Path

import httpx2
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.webhooks.callback import new_secret
from tests.flower import flower_tasks
from tests.receiver import Receiver
from tests.secrets_scan import count_values, leaks_in_logs, leaks_in_redis
from tests.stack import CALLER_APP_KEY, CALLER_KEY, MockProxy, Stack, chat, submit, wait_finished, wait_until


def every_database(url: str) -> list[str]:
    """URLs of every database of the test Redis that holds keys (the stacks use several)."""
    client = redis.Redis.from_url(url)
    try:
        dbs = [name.removeprefix("db") for name in client.info("keyspace")]
    finally:
        client.close()
    return [url.rsplit("/", 1)[0] + f"/{db}" for db in dbs]


def test_no_secret_anywhere_after_a_full_run(
    stack: Stack, mock_proxy: MockProxy, redis_server: RedisServer, flower: str, log_dir: Path, model: str
) -> None:
    callback_secret = new_secret()
    mock_proxy.script(model + "-retry", {"kind": "status", "status": 500}, {"kind": "status", "status": 429})
    mock_proxy.script(model + "-fail", {"kind": "status", "status": 401})
    with Receiver() as receiver, stack.client() as client:
        receiver.statuses.append(500)
        ids = {
            submit(client, chat(model), callback_url=receiver.url, callback_secret=callback_secret)["id"],
            submit(client, chat(model + "-retry"), callback_url=receiver.url)["id"],
            submit(client, chat(model + "-fail"))["id"],
            submit(client, chat(model + "-stream", stream=True))["id"],
        }
        # Calls of the OpenAI-compatible route, plain, streamed and failed, are jobs too.
        mock_proxy.script(model + "-openai-fail", {"kind": "status", "status": 400})
        for suffix, stream in (("-openai", False), ("-openai", True), ("-openai-fail", False)):
            answer = client.post("/v1/chat/completions", json=chat(model + suffix, stream=stream))
            assert answer.status_code in (200, 400), answer.text
            ids.add(answer.headers["x-request-id"])
        for job_id in ids:
            wait_finished(client, job_id)
            wait_until(client, job_id, lambda job: job.get("callback_status") in (None, "delivered"))
    secrets = [CALLER_KEY, CALLER_APP_KEY, callback_secret]

    assert count_values(stack.redis_url) > 20, "the scan must have read the jobs and the broker"
    for url in every_database(redis_server.url):
        assert leaks_in_redis(url, secrets) == [], url
    assert leaks_in_logs(log_dir, secrets) == []

    assert httpx2.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    tasks = flower_tasks(flower, ids)
    assert all(job_id in tasks for job_id in ids), "Flower shows each job by id"
    assert "llmq.call_proxy" in tasks and "llmq.deliver_webhook" in tasks
    assert not any(secret in tasks for secret in secrets)
