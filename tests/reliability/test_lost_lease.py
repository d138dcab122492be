"""A worker lost mid-call: its job is taken back when the call's lease lapses, not after the visibility timeout."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from llmq.devstack.processes import mock_process
from llmq.devstack.redis_server import RedisServer, free_port
from tests.brokers import BROKERS, rabbitmq_vhost
from tests.stack import MockProxy, Stack, chat, eventually, submit, wait_finished, wait_status

VISIBILITY_S = 600
# The lease: connect + read timeout + 5 s = 10 s.
TIMEOUTS = {"LLMQ_CONNECT_TIMEOUT_S": "1", "LLMQ_READ_TIMEOUT_S": "4"}
LEASE_S = 10


@pytest.mark.parametrize("broker", BROKERS)
def test_a_job_whose_worker_died_mid_call_is_finished_within_its_lease(
    redis_server: RedisServer, mock_proxy: MockProxy, make_stack: Callable[..., Stack], model: str, broker: str,
    record_figures: Callable[..., None],
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + ("/8" if broker == "amqp" else "/7")
    with contextlib.ExitStack() as cleanup:
        broker_url = cleanup.enter_context(rabbitmq_vhost()) if broker == "amqp" else url
        stack = make_stack(url, mock_proxy.url, f"lost-lease-{broker}", LLMQ_BROKER_URL=broker_url,
                           LLMQ_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S), LLMQ_LEASE_CHECK_S="1", **TIMEOUTS)
        stack.redis.flushdb()
        stack.start_api()
        stack.start_worker()
        # The first call is slow enough to be cut by the kill; the next one answers at once.
        mock_proxy.script(model, {"kind": "ok", "latency_ms": 3000})
        with stack.client() as client:
            job_id = submit(client, chat(model))["id"]
            wait_status(client, job_id, "running")
            eventually(lambda: mock_proxy.calls(model), 10, "the call to be in flight at the proxy", interval_s=0.02)
            killed_at = time.monotonic()
            stack.workers[-1].kill()
            stack.start_worker()
            # Far below the visibility timeout: only the lapsed lease can have brought the job back.
            job = wait_finished(client, job_id, timeout_s=VISIBILITY_S / 10)
            recovered_s = time.monotonic() - killed_at
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["worker_lost", "ok"]
    assert len(mock_proxy.calls(model)) == 2, "called once more, for the call that was cut"
    record_figures(f"worker SIGKILL, lease recovery ({broker})", jobs=1, lost=0, duplicate_calls=1,
                   recovery_s=round(recovered_s, 1), lease_s=LEASE_S, lease_check_s=1,
                   visibility_timeout_s=VISIBILITY_S)


def test_a_live_worker_keeps_a_call_longer_than_its_lease(
    redis_server: RedisServer, make_stack: Callable[..., Stack], log_dir: Path, model: str
) -> None:
    # A mock of its own streams one word a second: the answer takes about twice the lease, in gaps shorter than
    # the read timeout.
    port = free_port()
    slow = mock_process(dict(os.environ), port, log_dir / "slow-stream-mock.log", "--chunk-delay-ms", "1000").start()
    try:
        slow.wait_for_log("mock proxy listening")
        mock = MockProxy(f"http://127.0.0.1:{port}/openai-compatible/v1")
        url = redis_server.url.rsplit("/", 1)[0] + "/7"
        stack = make_stack(url, mock.url, "live-lease", LLMQ_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
                           LLMQ_LEASE_CHECK_S="1", **TIMEOUTS)
        stack.redis.flushdb()
        stack.start_api()
        stack.start_worker()
        words = " ".join(f"word{i}" for i in range(2 * LEASE_S))
        with stack.client() as client:
            job_id = submit(client, chat(model, words, stream=True))["id"]
            job = wait_finished(client, job_id, timeout_s=VISIBILITY_S / 10)
        calls = mock.calls(model)
        mock.http.close()
    finally:
        slow.stop()
    assert job["status"] == "succeeded"
    assert [a["outcome"] for a in job["attempts"]] == ["ok"]
    assert job["attempts"][0]["duration_ms"] > LEASE_S * 1000, "the call outlived its first lease"
    assert len(calls) == 1, "the lease was renewed: nobody took the call over"
