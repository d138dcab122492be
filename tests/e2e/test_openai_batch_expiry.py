"""The completion window's end: finished lines are kept, the others go to the error file as `batch_expired`.

Owns its stack (Redis db 8): the window is shortened to 3 seconds for every batch of it.
"""

from __future__ import annotations

from pathlib import Path

from openai import OpenAI

from llmq.devstack.redis_server import RedisServer
from tests.e2e.test_openai_batch import BATCH_ENV, read_lines, request_line, upload, wait_batch
from tests.stack import CALLER_KEY, MockProxy, Stack

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
