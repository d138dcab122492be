"""The completion window's end: finished lines are kept, the others go to the error file as `batch_expired`.

Owns its stack (Redis db 8): the window is shortened to 3 seconds for every batch of it.
"""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.e2e.test_openai_batch import BATCH_ENV, read_lines, request_line, upload, wait_batch
from tests.stack import CALLER_KEY, MockProxy, Stack, eventually

LINES = 10


def test_window_end_expires_unfinished_lines(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-expiry", LLMQ_BROKER_URL=url,
                  **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": "2", "LLMQ_BATCH_COMPLETION_WINDOW_S": "3"})
    try:
        stack.start_api()
        stack.start_worker()
        mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 1000}] * LINES)
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1") as client:
            uploaded = upload(client, [request_line(f"r{i}", model) for i in range(LINES)])
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            assert batch.expires_at == batch.created_at + 3
            done = wait_batch(client, batch.id, timeout_s=60)
            output = read_lines(client, done.output_file_id)
            errors = read_lines(client, done.error_file_id)
        assert done.status == "expired" and done.expired_at is not None and done.expired_at >= batch.expires_at
        assert done.completed_at is None
        assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(LINES))
        assert output and all(line["response"]["status_code"] == 200 for line in output)
        assert errors and all(e["error"]["code"] == "batch_expired" and e["response"] is None for e in errors)
        assert done.request_counts is not None
        assert (done.request_counts.completed, done.request_counts.failed) == (len(output), len(errors))
        # No call started after the window's end: every call made was for a line in the output, or cut short.
        assert len(mock_proxy.calls(model)) <= len(output) + 2
    finally:
        stack.stop()


def test_line_jobs_end_at_the_window_between_the_batchs_steps(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    """Every line's job carries the window's end as its `deadline`: a line still queued or waiting for a retry then
    ends `expired` by itself, and no proxy call starts past the window, though the batch's next step is seconds away.
    The lines that ended so are in the error file as `batch_expired`, not with the proxy's last failure."""
    url = redis_server.url.rsplit("/", 1)[0] + "/8"
    stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-line-deadlines", LLMQ_BROKER_URL=url,
                  **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": str(LINES), "LLMQ_BATCH_COMPLETION_WINDOW_S": "3",
                     # The first step feeds every line; the next comes well after the window's end.
                     "LLMQ_BATCH_STEP_INTERVAL_S": "8",
                     # Two calls at a time: the other lines wait in the queue, held by flow control.
                     "LLMQ_MODEL_CONCURRENCY": f"{model}=2"})
    stack.redis.flushdb()
    try:
        stack.start_api()
        stack.start_worker()
        # Two slow successes, then a proxy that answers 503 to everything: those lines retry until the window ends.
        mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 1000}] * 2,
                          *[{"kind": "status", "status": 503}] * 500)
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1") as client:
            uploaded = upload(client, [request_line(f"r{i}", model) for i in range(LINES)])
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            inflight = eventually(lambda: stack.redis.hkeys(redis_keys.batch_inflight(batch.id)), 30,
                                  "the lines to be fed")
            deadlines = {stack.redis.hget(redis_keys.job(job_id), "deadline") for job_id in inflight}
            assert deadlines == {repr(float(batch.expires_at))}
            done = wait_batch(client, batch.id, timeout_s=60)
            output = read_lines(client, done.output_file_id)
            errors = read_lines(client, done.error_file_id)
        assert done.status == "expired"
        assert sorted(line["custom_id"] for line in output + errors) == sorted(f"r{i}" for i in range(LINES))
        assert len(output) <= 2 and all(line["response"]["status_code"] == 200 for line in output)
        assert errors and [(e["error"] or {}).get("code") for e in errors] == ["batch_expired"] * len(errors), errors
        assert all(e["response"] is None for e in errors)
        assert stack.redis.zcard(redis_keys.DEADLINES) == 0  # every line left the deadline index as it ended
        # A call is claimed before the deadline and reaches the proxy a moment later; none is claimed past it.
        calls = mock_proxy.calls(model)
        assert calls and max(call["at"] for call in calls) < batch.expires_at + 1, \
            sorted(call["at"] - batch.expires_at for call in calls)[-5:]
    finally:
        stack.stop()
