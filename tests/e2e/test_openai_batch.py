"""The OpenAI Files API with the official SDK, only `base_url` changed.

Real API and worker processes on a Redis db of their own (6), the mock proxy; a small feeder window (3 lines)
so every batch here runs through several feeds.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import OpenAI
from openai.types import FileDeleted, FileObject

from llmq.devstack.redis_server import RedisServer
from tests.stack import CALLER_KEY, OTHER_KEY, MockProxy, Stack

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




def test_another_keys_files_are_404(batch_stack: Stack, sdk: OpenAI, model: str) -> None:
    uploaded = upload(sdk, [request_line("a", model)])
    with OpenAI(api_key=OTHER_KEY, base_url=f"{batch_stack.base_url}/v1") as other:
        for call in (lambda: other.files.retrieve(uploaded.id), lambda: other.files.content(uploaded.id),
                     lambda: other.files.delete(uploaded.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        assert uploaded.id not in [f.id for f in other.files.list()]
    assert sdk.files.retrieve(uploaded.id).id == uploaded.id
