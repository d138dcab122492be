"""The OpenAI Batch API with the official SDK, only `base_url` changed: files, batches, the cookbook flow.

Real API and worker processes on a Redis db of their own (6), the mock proxy; a small feeder window (3 lines)
so every batch here runs through several feeds.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import Batch, FileDeleted, FileObject
from openai.types.webhooks import BatchCompletedWebhookEvent

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from tests.receiver import Receiver
from tests.stack import CALLER_KEY, OTHER_KEY, MockProxy, Stack, eventually

BATCH_ENV = {
    "LLMQ_BATCH_WINDOW_LINES": "3",
    "LLMQ_BATCH_STEP_INTERVAL_S": "0.2",
    "LLMQ_SWEEP_INTERVAL_S": "1",
    "LLMQ_BATCH_STALL_S": "3",
}


@pytest.fixture(scope="module")
def batch_stack(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    url = redis_server.url.rsplit("/", 1)[0] + "/6"
    running = Stack(url, mock_proxy.url, log_dir / "openai-batch", LLMQ_BROKER_URL=url, **BATCH_ENV)
    try:
        running.start_api()
        running.start_worker()
        yield running
    finally:
        running.stop()


@pytest.fixture
def sdk(batch_stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(api_key=CALLER_KEY, base_url=f"{batch_stack.base_url}/v1") as client:
        yield client


def request_line(custom_id: str, model: str, text: str = "hello", **extra: Any) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body, **extra}


def jsonl(lines: list[Any]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


def upload(client: OpenAI, lines: list[Any], name: str = "requests.jsonl") -> FileObject:
    return client.files.create(file=(name, io.BytesIO(jsonl(lines))), purpose="batch")


def wait_batch(client: OpenAI, batch_id: str, timeout_s: float = 60) -> Batch:
    deadline = time.monotonic() + timeout_s
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        assert time.monotonic() < deadline, f"batch {batch_id} still {batch.status} after {timeout_s}s"
        time.sleep(0.2)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).text.splitlines() if line]


# --- files --------------------------------------------------------------------------------------------


def test_file_upload_retrieve_content_delete(sdk: OpenAI, model: str) -> None:
    lines = [request_line(f"r{i}", model) for i in range(3)]
    uploaded = upload(sdk, lines)
    assert isinstance(uploaded, FileObject)
    assert (uploaded.object, uploaded.purpose, uploaded.status, uploaded.filename) == \
        ("file", "batch", "processed", "requests.jsonl")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(jsonl(lines))
    assert uploaded.expires_at is not None and uploaded.expires_at - uploaded.created_at == 30 * 24 * 3600
    assert sdk.files.retrieve(uploaded.id) == uploaded
    assert sdk.files.content(uploaded.id).content == jsonl(lines)
    deleted = sdk.files.delete(uploaded.id)
    assert isinstance(deleted, FileDeleted) and (deleted.id, deleted.deleted) == (uploaded.id, True)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)


def test_file_expires_after_is_honoured(sdk: OpenAI, model: str) -> None:
    uploaded = sdk.files.create(file=("a.jsonl", io.BytesIO(jsonl([request_line("a", model)]))), purpose="batch",
                                expires_after={"anchor": "created_at", "seconds": 3600})
    assert uploaded.expires_at == uploaded.created_at + 3600


def test_file_list_paginates_newest_first(batch_stack: Stack, model: str) -> None:
    # A key of its own, so the listing holds this test's files alone.
    with OpenAI(api_key="5150:list-test-key", base_url=f"{batch_stack.base_url}/v1") as client:
        ids = [upload(client, [request_line("a", model)], name=f"f{i}.jsonl").id for i in range(5)]
        first = client.files.list(limit=2)
        assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
        assert [f.id for f in client.files.list(limit=2).iter_pages().__next__().data] == ids[::-1][:2]
        assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # auto-pagination through `after`
        assert [f.id for f in client.files.list(order="asc", limit=10).data] == ids
        assert client.files.list(purpose="batch_output").data == []


def test_file_refusals_in_openais_shape(sdk: OpenAI, model: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.files.create(file=("a.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert caught.value.code == "invalid_purpose" and caught.value.param == "purpose"


def test_another_keys_files_and_batches_are_404(batch_stack: Stack, sdk: OpenAI, model: str) -> None:
    uploaded = upload(sdk, [request_line("a", model)])
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    with OpenAI(api_key=OTHER_KEY, base_url=f"{batch_stack.base_url}/v1") as other:
        for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id),
                     lambda: other.files.delete(uploaded.id), lambda: other.batches.retrieve(batch.id),
                     lambda: other.batches.cancel(batch.id),
                     lambda: other.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                                  completion_window="24h")):
            with pytest.raises(openai.NotFoundError):
                call()
        assert uploaded.id not in [f.id for f in other.files.list()]
        assert batch.id not in [b.id for b in other.batches.list()]
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
    wait_batch(sdk, batch.id)


# --- batches ------------------------------------------------------------------------------------------


def test_cookbook_flow_output_and_error_files(batch_stack: Stack, sdk: OpenAI, mock_proxy: MockProxy,
                                              model: str) -> None:
    bad_model = model + "-refused"
    mock_proxy.script(bad_model, {"kind": "status", "status": 400,
                                  "body": {"error": {"message": "bad request", "type": "invalid_request_error"}}})
    lines: list[Any] = [request_line(f"ok-{i}", model, f"line {i}") for i in range(7)]
    lines.insert(3, "")  # a blank line is allowed, and skipped
    lines.append(request_line("refused", bad_model))
    uploaded = upload(sdk, lines)
    created = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", metadata={"project": "eval"})
    assert isinstance(created, Batch)
    assert (created.status, created.endpoint, created.input_file_id) == \
        ("validating", "/v1/chat/completions", uploaded.id)
    assert created.expires_at == created.created_at + 24 * 3600
    assert created.metadata == {"project": "eval"}
    batch = wait_batch(sdk, created.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (8, 7, 1)
    for stamp in (batch.in_progress_at, batch.finalizing_at, batch.completed_at):
        assert stamp is not None and created.created_at <= stamp
    assert batch.failed_at is None and batch.cancelled_at is None and batch.model is None  # two models
    assert batch.usage is not None and batch.usage.total_tokens > 0
    output = read_lines(sdk, batch.output_file_id)
    assert sorted(o["custom_id"] for o in output) == sorted(f"ok-{i}" for i in range(7))
    for line in output:
        assert line["error"] is None and line["response"]["status_code"] == 200
        assert line["id"].startswith("batch_req_") and line["response"]["request_id"].startswith("job_")
        n = line["custom_id"].removeprefix("ok-")
        assert line["response"]["body"]["choices"][0]["message"]["content"] == f"Echo: line {n}"
    errors = read_lines(sdk, batch.error_file_id)
    assert [e["custom_id"] for e in errors] == ["refused"]
    assert errors[0]["response"]["status_code"] == 400 and errors[0]["response"]["body"]["error"]["message"]
    output_file = sdk.files.retrieve(batch.output_file_id or "")
    assert output_file.purpose == "batch_output" and output_file.expires_at is not None
    # Redis keeps no line of a finished batch: the results are in the files.
    assert batch_stack.redis.hlen(redis_keys.batch_inflight(batch.id)) == 0
    assert batch_stack.redis.zscore(redis_keys.ACTIVE_BATCHES, batch.id) is None


def test_single_model_batch_names_its_model(sdk: OpenAI, model: str) -> None:
    uploaded = upload(sdk, [request_line("a", model), request_line("b", model)])
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert batch.model == model
    assert wait_batch(sdk, batch.id).status == "completed"


@pytest.mark.parametrize(("line", "code"), [
    ("{not json", "invalid_json_line"),
    ({"method": "POST", "url": "/v1/chat/completions", "body": {}}, "missing_custom_id"),
    (request_line("x", "m", url="/v1/embeddings"), "invalid_url"),
    ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [1]}},
     "missing_model"),
    ({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}},
     "missing_messages"),
    (request_line("first", "m"), "duplicate_custom_id"),
])
def test_invalid_file_fails_the_batch_naming_line_and_reason(sdk: OpenAI, line: Any, code: str) -> None:
    uploaded = upload(sdk, [request_line("first", "m"), line])
    batch = wait_batch(sdk, sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                               completion_window="24h").id)
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.errors is not None and batch.errors.data is not None
    assert [(e.code, e.line) for e in batch.errors.data] == [(code, 2)]
    assert batch.output_file_id is None and batch.error_file_id is None


def test_too_many_lines_fails_the_batch(sdk: OpenAI) -> None:
    line = json.dumps(request_line("x", "m"))
    text = "".join(line.replace('"x"', f'"{i}"') + "\n" for i in range(50_001)).encode()
    uploaded = sdk.files.create(file=("big.jsonl", io.BytesIO(text)), purpose="batch")
    batch = wait_batch(sdk, sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                               completion_window="24h").id)
    assert batch.status == "failed" and batch.errors is not None and batch.errors.data is not None
    assert [e.code for e in batch.errors.data] == ["too_many_lines"]


@pytest.mark.parametrize(("fields", "param"), [
    ({"endpoint": "/v1/embeddings"}, "endpoint"),
    ({"completion_window": "48h"}, "completion_window"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k" * 65: "v"}}, "metadata"),
    ({"metadata": {"k": "v" * 513}}, "metadata"),
])
def test_batch_creation_refusals(batch_stack: Stack, sdk: OpenAI, model: str, fields: dict[str, Any],
                                 param: str) -> None:
    uploaded = upload(sdk, [request_line("a", model)])
    body = {"input_file_id": uploaded.id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **fields}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.post("/batches", body=body, cast_to=Batch)
    assert caught.value.param is not None and caught.value.param.startswith(param)


def test_batches_list_and_paginate(batch_stack: Stack, model: str) -> None:
    with OpenAI(api_key="6160:batch-list-key", base_url=f"{batch_stack.base_url}/v1") as client:
        uploaded = upload(client, [request_line("a", model)])
        ids = [client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h").id for _ in range(3)]
        page = client.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        assert [b.id for b in client.batches.list(limit=2)] == ids[::-1]
        assert [b.id for b in client.batches.list(after=ids[1]).data] == [ids[0]]
        for batch_id in ids:
            assert wait_batch(client, batch_id).status == "completed"


def test_cancel_stops_new_calls_and_keeps_finished_lines(batch_stack: Stack, sdk: OpenAI, mock_proxy: MockProxy,
                                                         model: str) -> None:
    # Every call takes 1.5 s: the window of 3 is in flight when the cancel comes.
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 1500}] * 20)
    uploaded = upload(sdk, [request_line(f"r{i}", model) for i in range(12)])
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    eventually(lambda: mock_proxy.calls(model), 20, "the first line's call", interval_s=0.05)
    cancelling = sdk.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    calls_at_cancel = len(mock_proxy.calls(model))
    done = wait_batch(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    time.sleep(2)  # any call that would still start
    assert len(mock_proxy.calls(model)) == calls_at_cancel
    lines = read_lines(sdk, done.output_file_id) + read_lines(sdk, done.error_file_id)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"r{i}" for i in range(12))
    cancelled = [line for line in lines if line["error"] and line["error"]["code"] == "batch_cancelled"]
    assert len(cancelled) >= 12 - calls_at_cancel
    assert done.request_counts is not None and done.request_counts.total == 12
    assert done.request_counts.completed + done.request_counts.failed == 12
    assert sdk.batches.cancel(batch.id).status == "cancelled"  # a second cancel changes nothing


def test_proxy_outage_does_not_fail_lines(sdk: OpenAI, mock_proxy: MockProxy, model: str) -> None:
    """30 answers of 503 across 3 lines: each line needs far more than its 5 attempts, and retries on until
    the proxy is back, as the window (24 h) allows."""
    mock_proxy.script(model, *[{"kind": "status", "status": 503}] * 30)
    uploaded = upload(sdk, [request_line(f"r{i}", model) for i in range(3)])
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(sdk, batch.id, timeout_s=90)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    assert len(mock_proxy.calls(model)) == 33  # every 503 was retried
    assert sorted(line["custom_id"] for line in read_lines(sdk, done.output_file_id)) == ["r0", "r1", "r2"]


def test_proxy_outage_mid_batch_one_probe_at_a_time_then_recovery(
    batch_stack: Stack, sdk: OpenAI, mock_proxy: MockProxy, model: str
) -> None:
    """The proxy goes down mid-batch: the shared breaker opens, and after each cool-down one line probes the proxy
    while the others wait, instead of all of them calling; each failed probe opens it again. When the proxy is
    back, the probe's success closes it and the batch completes with every line."""
    mock_proxy.script(model, {"kind": "ok"}, *[{"kind": "status", "status": 503}] * 10_000)
    uploaded = upload(sdk, [request_line(f"r{i}", model) for i in range(6)])
    batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    environment = eventually(lambda: batch_stack.redis.hget(redis_keys.batch(batch.id), "environment"), 10,
                             "the batch's record")
    breaker = redis_keys.breaker(environment)

    def trips() -> int:
        return int(batch_stack.redis.hget(breaker, "trips") or 0)

    eventually(lambda: trips() >= 3, 60, "the breaker to open, and probes to fail", interval_s=0.05)
    calls_before, trips_before = len(mock_proxy.calls(model)), trips()
    eventually(lambda: trips() >= trips_before + 3, 60, "three more probes to fail", interval_s=0.05)
    trips_after = trips()
    calls_after = len(mock_proxy.calls(model))
    # Open or half-open, only probes reach the proxy: one call per failed probe (and one probe in flight).
    assert calls_after - calls_before <= trips_after - trips_before + 1, (calls_before, calls_after, trips_after)
    mock_proxy.http.delete("/_mock/scripts", params={"model": model}).raise_for_status()  # the proxy is back
    done = wait_batch(sdk, batch.id, timeout_s=90)
    assert done.status == "completed" and done.request_counts is not None
    assert (done.request_counts.completed, done.request_counts.failed) == (6, 0)
    assert sorted(line["custom_id"] for line in read_lines(sdk, done.output_file_id)) == [f"r{i}" for i in range(6)]
    assert not batch_stack.redis.exists(breaker)  # closed: the trips are forgotten


def test_batch_lines_count_in_their_app_quota_and_wait_for_room(batch_stack: Stack, mock_proxy: MockProxy,
                                                                model: str) -> None:
    """An app id not known yet shares LLMQ_UNKNOWN_APPS_MAX_UNFINISHED (1,000) with the others: a batch is refused
    while that quota is full, and its lines are fed only as far as there is room."""
    unknown = redis_keys.UNKNOWN_APPS_UNFINISHED
    now = time.time()
    others = {f"job_of_another_app{n}": now for n in range(1000)}  # fresh: neither due nor stale
    batch_stack.redis.zadd(unknown, others)
    mock_proxy.script(model, *[{"kind": "ok", "latency_ms": 1500}] * 3)
    try:
        with OpenAI(api_key="5161:quota-test-key", base_url=f"{batch_stack.base_url}/v1", max_retries=0) as client:
            uploaded = upload(client, [request_line(f"r{i}", model) for i in range(3)])
            with pytest.raises(openai.RateLimitError) as refused:
                client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
            assert refused.value.code == "quota_exceeded"
            assert "LLMQ_UNKNOWN_APPS_MAX_UNFINISHED" in refused.value.message and "'5161'" in refused.value.message
            assert int(refused.value.response.headers["retry-after"]) > 0
            batch_stack.redis.zrem(unknown, "job_of_another_app0")  # room for one
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            eventually(lambda: mock_proxy.calls(model), 20, "the first line's call", interval_s=0.05)
            # The first line's call takes 1.5 s: meanwhile it fills the quota, and the window (3) holds it alone.
            inflight = batch_stack.redis.hkeys(redis_keys.batch_inflight(batch.id))
            assert len(inflight) == 1
            assert batch_stack.redis.hget(redis_keys.job(inflight[0]), "quota_set") == unknown
            assert batch_stack.redis.zcard(unknown) == 1000
            batch_stack.redis.zrem(unknown, *others)
            done = wait_batch(client, batch.id)
            assert done.status == "completed" and done.request_counts is not None
            assert (done.request_counts.completed, done.request_counts.failed) == (3, 0)
    finally:
        batch_stack.redis.zrem(unknown, *others)


# --- webhooks (llmq's extension) ----------------------------------------------------------------------


def test_batch_webhook_unwraps_to_the_typed_event(sdk: OpenAI, model: str) -> None:
    secret = "whsec_" + base64.b64encode(b"batch-webhook-secret-of-32-bytes").decode()
    with Receiver() as receiver:
        receiver.statuses.append(500)  # the first attempt fails: the second is signed afresh
        uploaded = upload(sdk, [request_line("a", model)])
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h",
                                   extra_body={"callback_url": receiver.url, "callback_secret": secret})
        assert wait_batch(sdk, batch.id).status == "completed"
        deadline = time.monotonic() + 30
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, "the batch's webhook was not delivered twice"
            time.sleep(0.1)
    first, second = receiver.received[:2]
    event = sdk.webhooks.unwrap(second.body, second.headers, secret=secret)
    assert isinstance(event, BatchCompletedWebhookEvent)
    assert event.data.id == batch.id and event.id.startswith("evt_") and event.object == "event"
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == event.id
    assert first.body == second.body
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(second.body, second.headers, secret="whsec_" + base64.b64encode(b"x" * 32).decode())


def test_batch_webhook_refusals(sdk: OpenAI, model: str) -> None:
    uploaded = upload(sdk, [request_line("a", model)])
    for extra, needle in (({"callback_url": "http://10.1.2.3/hook"}, "callback_url"),
                          ({"callback_url": "http://127.0.0.1:9/hook", "callback_secret": "nope"}, "callback_secret"),
                          ({"callback_secret": "whsec_" + base64.b64encode(b"y" * 32).decode()}, "callback_secret")):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
                               extra_body=extra)
        assert needle in caught.value.message
