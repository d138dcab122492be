"""A batch survives its processes: SIGKILL a worker or the API mid-upload, mid-validation, mid-run or
mid-finalize, restart, and every line is reported exactly once; nothing half-written stays in the file store.

Each test owns its stack (Redis db 7, 10, 12) because it kills its processes.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import uuid
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from openai import OpenAI

from llmq.devstack.redis_server import RedisServer
from llmq.devstack.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, clean_aws_environment
from llmq.worker import redis_keys
from tests.e2e.test_openai_batch import BATCH_ENV, jsonl, read_lines, request_line, upload, wait_batch
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
            # Some lines written, others in flight: kill the worker there. (Both read at once: a step collects
            # its window's last lines a moment before it feeds the next ones.)
            def collected_and_in_flight() -> bool:
                pipe = stack.redis.pipeline(transaction=True)
                pipe.hget(redis_keys.batch(batch.id), "completed")
                pipe.hlen(redis_keys.batch_inflight(batch.id))
                completed, in_flight = pipe.execute()
                return int(completed or 0) >= 5 and in_flight > 0

            eventually(collected_and_in_flight, 30, "some lines to be collected and others in flight",
                       interval_s=0.02)
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


# --- the API killed during an upload --------------------------------------------------------------------

UPLOAD_BOUNDARY = "llmq-crash-boundary"


def start_upload(base_url: str, model: str, body_bytes: int) -> socket.socket:
    """A multipart upload through a raw socket: headers announcing `body_bytes`, then the form and the file's
    lines up to `body_bytes` less 4 MB, never the rest: the request stays mid-body."""
    line = (json.dumps(request_line("r", model, "x" * 200)) + "\n").encode()
    head = (f"--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
            f"--{UPLOAD_BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jsonl\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n").encode()
    host, port = base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall((f"POST /v1/files HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {CALLER_KEY}\r\n"
                  f"Content-Type: multipart/form-data; boundary={UPLOAD_BOUNDARY}\r\n"
                  f"Content-Length: {body_bytes}\r\n\r\n").encode() + head)
    sent = len(head)
    while sent < body_bytes - 4 * 1024 * 1024:
        sock.sendall(line * 1000)
        sent += len(line) * 1000
    return sock


def stored(stack: Stack, s3: Any, bucket: str | None) -> list[str]:
    """Everything in the stack's file store: objects, temporary files, unfinished multipart uploads."""
    if bucket is None:
        root = Path(stack.env["LLMQ_FILES_DIR"])
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket).get("Contents", ())]
    return keys + [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", ())]


@pytest.mark.parametrize("backend", ["directory", "s3"])
def test_api_killed_mid_upload_leaves_no_file_and_nothing_half_written(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str, backend: str,
    request: pytest.FixtureRequest,
) -> None:
    """SIGKILL the API while a 24 MB upload is mid-body: no file record appears, what the cut write left in the
    store (a temporary file, a multipart upload) is swept, and after a restart the SDK uploads and runs a batch."""
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    env = {**BATCH_ENV, "LLMQ_FILES_ABANDONED_WRITE_S": "2"}
    bucket = None
    s3: Any = None
    if backend == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        bucket = f"llmq-crash-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        env.update(s3_env(server, bucket))
        with clean_aws_environment():
            s3 = botocore.session.get_session().create_client(
                "s3", endpoint_url=server.endpoint_url, region_name=REGION,
                aws_access_key_id=ACCESS_KEY_ID, aws_secret_access_key=SECRET_ACCESS_KEY)
    stack = Stack(url, mock_proxy.url, log_dir / f"openai-batch-upload-crash-{backend}", LLMQ_BROKER_URL=url, **env)
    stack.redis.flushdb()
    try:
        stack.start_api()
        stack.start_worker()
        sock = start_upload(stack.base_url, model, 24 * 1024 * 1024)
        try:
            # The write under way is in the store (a part sent to the bucket, or bytes in a temporary file).
            eventually(lambda: stored(stack, s3, bucket), 30, "the upload's bytes to reach the store")
            assert stack.api is not None
            stack.api.kill()
        finally:
            sock.close()
        assert stack.redis.keys(redis_keys.file("*")) == []
        eventually(lambda: stored(stack, s3, bucket) == [], 30, "the cut write to be swept", interval_s=0.25)
        stack.start_api()
        lines = [request_line(f"r{i}", model) for i in range(3)]
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1") as client:
            uploaded = upload(client, lines)
            assert client.files.content(uploaded.id).content == jsonl(lines)
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            done = wait_batch(client, batch.id)
            assert done.status == "completed"
            assert sorted(line["custom_id"] for line in read_lines(client, done.output_file_id)) == ["r0", "r1", "r2"]
        assert stack.redis.keys(redis_keys.file("*")) != []
    finally:
        stack.stop()
        if s3 is not None:
            s3.close()


# --- a worker killed while it validates or finalizes a batch ----------------------------------------------


def s3_env(server: S3Server, bucket: str) -> dict[str, str]:
    """A stack's file store in `bucket` of `server`, its processes kept off the machine's AWS settings."""
    return {"LLMQ_FILES_S3_URL": f"s3://{bucket}/files", "LLMQ_FILES_S3_ENDPOINT_URL": server.endpoint_url,
            "LLMQ_FILES_S3_REGION": REGION, "LLMQ_FILES_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "LLMQ_FILES_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY, "LLMQ_FILES_S3_PART_BYTES": str(5 << 20),
            "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true", "NO_PROXY": "127.0.0.1,localhost"}


def status_of(stack: Stack, batch_id: str) -> str | None:
    return stack.redis.hget(redis_keys.batch(batch_id), "status")


def assert_every_line_once(client: OpenAI, done: Any, lines: int) -> None:
    assert done.status == "completed", done
    found = read_lines(client, done.output_file_id) + read_lines(client, done.error_file_id)
    assert collections.Counter(line["custom_id"] for line in found) == {f"r{i}": 1 for i in range(lines)}
    assert all(line["response"]["status_code"] == 200 for line in found)
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (lines, lines, 0)


def test_worker_and_api_killed_mid_validation_the_batch_goes_on(
    mock_proxy: MockProxy, redis_server: RedisServer, log_dir: Path, model: str
) -> None:
    """The worker validating a batch waits on its file store (an S3 server that stopped answering) and is
    SIGKILLed there, holding the batch's step, and the API with it: a new worker takes the batch over, which
    completes, read through a new API."""
    url = redis_server.url.rsplit("/", 1)[0] + "/7"
    lines = 12
    with S3Server(log_dir / "s3-validation-crash.log") as server:
        bucket = f"llmq-crash-{uuid.uuid4().hex[:12]}"
        server.create_bucket(bucket)
        stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-validation-crash", LLMQ_BROKER_URL=url,
                      **BATCH_ENV, **s3_env(server, bucket))
        stack.redis.flushdb()
        paused = False
        try:
            stack.start_api()
            stack.start_worker()
            with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1", max_retries=0) as client:
                uploaded = upload(client, [request_line(f"r{i}", model) for i in range(lines)])
                os.killpg(server.process.pid, signal.SIGSTOP)  # the store stops answering (the batch API does not
                paused = True                                   # need it to create a batch)
                batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                              completion_window="24h")
                # The worker took the batch's step (its lock) and waits on the store, mid-validation.
                eventually(lambda: stack.redis.exists(redis_keys.batch_lock(batch.id)), 30,
                           "the worker to take the batch's step")
                assert status_of(stack, batch.id) == "validating"
                stack.workers[-1].kill()
                assert stack.api is not None
                stack.api.kill()
                os.killpg(server.process.pid, signal.SIGCONT)
                paused = False
                stack.start_api()
                stack.start_worker()
                done = wait_batch(client, batch.id, timeout_s=60)
                assert_every_line_once(client, done, lines)
        finally:
            if paused:
                os.killpg(server.process.pid, signal.SIGCONT)
            stack.stop()


def test_worker_and_api_killed_mid_finalize_the_batch_completes(
    mock_proxy: MockProxy, redis_server: RedisServer, log_dir: Path, model: str
) -> None:
    """SIGKILL the worker while it writes the output and error files (large lines make that take a while), and
    the API with it: a new worker finalizes the batch again, each line once, and no batch stays `finalizing`."""
    url = redis_server.url.rsplit("/", 1)[0] + "/10"
    lines = 600
    stack = Stack(url, mock_proxy.url, log_dir / "openai-batch-finalize-crash", LLMQ_BROKER_URL=url,
                  **{**BATCH_ENV, "LLMQ_BATCH_WINDOW_LINES": "200"})
    stack.redis.flushdb()
    try:
        stack.start_api()
        stack.start_worker()
        text = "y" * 30_000  # echoed into every output line: the files the finalize writes are tens of MB
        with OpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1", max_retries=0) as client:
            uploaded = upload(client, [request_line(f"r{i}", model, text) for i in range(lines)])
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            eventually(lambda: status_of(stack, batch.id) == "finalizing"
                       and stack.redis.exists(redis_keys.batch_lock(batch.id)), 90,
                       "the worker to be finalizing the batch", interval_s=0.005)
            stack.workers[-1].kill()
            assert stack.api is not None
            stack.api.kill()
            assert status_of(stack, batch.id) == "finalizing"  # killed before it could end the batch
            stack.start_api()
            stack.start_worker()
            done = wait_batch(client, batch.id, timeout_s=60)
            assert_every_line_once(client, done, lines)
    finally:
        stack.stop()
