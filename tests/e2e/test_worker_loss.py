"""Jobs survive their worker: cancel before pickup, and SIGKILL in the middle of a call.

These tests own their stack (Redis db 1) because they stop and kill workers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.brokers import BROKERS, pending_messages, rabbitmq_vhost
from tests.stack import MockProxy, Stack, chat, eventually, submit, wait_finished, wait_status, wait_until


@pytest.fixture(scope="module", params=BROKERS)
def own_stack(
    request: pytest.FixtureRequest, redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path
) -> Iterator[Stack]:
    amqp = request.param == "amqp"
    url = redis_server.url.rsplit("/", 1)[0] + ("/3" if amqp else "/1")
    with contextlib.ExitStack() as cleanup:
        broker = cleanup.enter_context(rabbitmq_vhost()) if amqp else url
        running = Stack(url, mock_proxy.url, log_dir / f"worker-loss-{request.param}", LLMQ_BROKER_URL=broker)
        cleanup.callback(running.stop)
        running.start_api()
        yield running


def broker_is_drained(stack: Stack, timeout_s: float = 10) -> bool:
    """Every message taken and acknowledged (an ack follows the job's last write by a moment)."""
    return eventually(lambda: pending_messages(stack.env["LLMQ_BROKER_URL"], stack.redis_url) == 0,
                      timeout_s, "the broker to hold no message", interval_s=0.1)


def test_cancel_before_pickup_never_calls_the_proxy(own_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    assert not own_stack.workers, "this test needs the queue to have no consumer yet"
    with own_stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 409

        own_stack.start_worker()
        # A later job on the same queue finishing means the cancelled one's message was taken first.
        follower = submit(client, chat(model + "-follower"))["id"]
        assert wait_finished(client, follower)["status"] == "succeeded"
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled"
    assert job["attempts"] == []
    assert mock_proxy.calls(model) == []
    assert not own_stack.redis.exists(redis_keys.job_events(job_id)), "nobody followed the job: no stream was written"
    assert broker_is_drained(own_stack)


def test_worker_killed_mid_call_the_job_still_succeeds(own_stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    if not own_stack.workers:
        own_stack.start_worker()
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 5000})
    with own_stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        wait_status(client, job_id, "running")
        eventually(lambda: mock_proxy.calls(model), 10, "the call to be in flight at the proxy", interval_s=0.02)
        own_stack.workers[-1].kill()
        own_stack.start_worker()
        job = wait_finished(client, job_id, timeout_s=60)
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["worker_lost", "ok"]
    assert len(mock_proxy.calls(model)) == 2
    assert broker_is_drained(own_stack)


@pytest.mark.parametrize("stream", [False, True])
def test_cancelling_mid_call_aborts_the_call(own_stack: Stack, mock_proxy: MockProxy, model: str, stream: bool) -> None:
    if not own_stack.workers:
        own_stack.start_worker()
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 10_000})
    with own_stack.client() as client:
        job_id = submit(client, chat(model, stream=stream))["id"]
        wait_status(client, job_id, "running")
        eventually(lambda: mock_proxy.calls(model), 10, "the call to be in flight at the proxy", interval_s=0.02)
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        # However the call ends (aborted, or answered after its 10 s), the mock says so.
        (call,) = eventually(lambda: [c for c in mock_proxy.calls(model) if c["ended"]], 30, "the call to end")
        job = wait_until(client, job_id, lambda job: job["attempts"], timeout_s=30)
    assert call["ended"] == "aborted", "the proxy answered a cancelled job's call: its tokens were spent"
    assert job["status"] == "cancelled"
    assert [a["outcome"] for a in job["attempts"]] == ["cancelled"]
    assert "result" not in job
    assert broker_is_drained(own_stack)
