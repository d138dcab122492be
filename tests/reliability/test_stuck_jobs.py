"""A job whose worker vanished and whose message was lost too is found by the sweeper and finished."""

from __future__ import annotations

import time
from collections.abc import Callable

from llmq.devstack.redis_server import RedisServer
from llmq.worker.runtime.redis_transport import UNACKED_KEY
from tests.stack import MockProxy, Stack, chat, submit, wait_finished, wait_status


def test_sweeper_rescues_a_job_whose_message_was_lost(
    redis_server: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str,
    record_figures: Callable[..., None],
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/10"
    stack = make_stack(url, mock_proxy.url, "stuck", LLMQ_CONNECT_TIMEOUT_S="1", LLMQ_READ_TIMEOUT_S="2",
                       LLMQ_RETRY_AFTER_CAP_S="1", LLMQ_VISIBILITY_TIMEOUT_S="8", LLMQ_SWEEP_INTERVAL_S="1")
    stack.redis.flushdb()
    stack.start_api()
    stack.start_worker()
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 1800})
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        wait_status(client, job_id, "running")
        stack.workers[-1].kill()
        # The broker loses the message too: nothing will ever redeliver it.
        stack.redis.delete(UNACKED_KEY)
        lost_at = time.monotonic()
        stack.start_worker()
        job = wait_finished(client, job_id, timeout_s=60)
        rescued_s = time.monotonic() - lost_at
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["worker_lost", "ok"]
    record_figures("lost message (sweeper)", jobs=1, lost=0, recovery_s=round(rescued_s, 1),
                   bound_s="lease (connect+read+5) + visibility timeout + sweep interval")
