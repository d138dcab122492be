"""A batch survives its worker: SIGKILL mid-batch, restart, and every line is reported exactly once.

Owns its stack (Redis db 7) because it kills the worker.
"""

from __future__ import annotations

import collections
from pathlib import Path

from openai import OpenAI

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.e2e.test_openai_batch import BATCH_ENV, read_lines, request_line, upload, wait_batch
from tests.stack import CALLER_KEY, MockProxy, Stack, eventually

LINES = 30


def test_worker_killed_mid_batch_every_custom_id_once(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-crash", LLMQ_BROKER_URL=url,
                  **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": "5"})
    try:
        stack.start_api()
        stack.start_worker()
        mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 300}] * (2 * LINES))
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1") as client:
            uploaded = upload(client, [request_line(f"r{i}", model, f"line {i}") for i in range(LINES)])
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            # Some lines written, others in flight: kill the worker there.
            eventually(lambda: int(stack.redis.hget(redis_keys.batch(batch.id), "completed") or 0) >= 5, 30,
                       "some lines to be finished and collected", interval_s=0.05)
            assert stack.redis.hlen(redis_keys.batch_inflight(batch.id)) > 0
            stack.workers[-1].kill()
            stack.start_worker()
            done = wait_batch(client, batch.id, timeout_s=90)
            assert done.status == "completed", done
            lines = read_lines(client, done.output_file_id) + read_lines(client, done.error_file_id)
        counts = collections.Counter(line["custom_id"] for line in lines)
        assert counts == {f"r{i}": 1 for i in range(LINES)}
        assert all(line["response"]["body"]["choices"][0]["message"]["content"] ==
                   f"Echo: line {line['custom_id'][1:]}" for line in lines)
        assert done.request_counts is not None
        counted = done.request_counts
        assert (counted.total, counted.completed, counted.failed) == (LINES, LINES, 0)
    finally:
        stack.stop()


def test_api_killed_mid_batch_the_batch_goes_on(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    """The API holds nothing of a batch once it is created: SIGKILL it mid-run, start it again, collect."""
    url = redis_server.url.rsplit("/", 1)[0] + "/10"
    stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-api-restart", LLMQ_BROKER_URL=url,
                  **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": "4"})
    try:
        stack.start_api()
        stack.start_worker()
        mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 200}] * LINES)
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1", max_retries=0) as client:
            uploaded = upload(client, [request_line(f"r{i}", model) for i in range(LINES)])
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            eventually(lambda: int(stack.redis.hget(redis_keys.batch(batch.id), "completed") or 0) >= 4, 30,
                       "some lines to be finished", interval_s=0.05)
            assert stack.api is not None
            stack.api.kill()
            stack.start_api()
            done = wait_batch(client, batch.id, timeout_s=90)
            lines = read_lines(client, done.output_file_id) + read_lines(client, done.error_file_id)
        assert done.status == "completed"
        assert collections.Counter(line["custom_id"] for line in lines) == {f"r{i}": 1 for i in range(LINES)}
    finally:
        stack.stop()
