"""The official OpenAI SDK and langchain_openai against llmq, with only `base_url` changed.

Real API and worker processes, the mock proxy with its faults. In the fault tests the SDK is built with
`max_retries=0`: whatever retrying happens is llmq's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI

from llmq.devstack.redis_server import free_port
from tests.stack import CALLER_KEY, MockProxy, Stack, eventually, wait_finished

GUIDE_MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "你是谁？"},
]
TOOLS: list[Any] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


SdkFactory = Callable[..., OpenAI]


@pytest.fixture
def sdk() -> Iterator[SdkFactory]:
    """Makes OpenAI clients the guide's way (`base_url` and the key), and closes them after the test."""
    made: list[OpenAI] = []

    def make(stack: Stack, base: str = "/v1", api_key: str = CALLER_KEY, **options: Any) -> OpenAI:
        client = OpenAI(api_key=api_key, base_url=f"{stack.base_url}{base}", **options)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def job_of(stack: Stack, job_id: str) -> dict[str, Any]:
    with stack.client() as client:
        return client.get(f"/v1/jobs/{job_id}").json()  # type: ignore[no-any-return]


# --- the guide's two examples -------------------------------------------------------------------------


def test_guide_plain_example_answers_and_is_a_job(
    stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory
) -> None:
    client = sdk(stack)
    completion = client.chat.completions.create(model=model, messages=GUIDE_MESSAGES)
    assert completion.choices[0].message.content == "Echo: 你是谁？"
    assert completion.id.startswith("chatcmpl-mock-")
    raw = client.chat.completions.with_raw_response.create(model=model, messages=GUIDE_MESSAGES, temperature=0.2)
    assert raw.parse().choices[0].message.content == "Echo: 你是谁？"
    job_id = raw.request_id
    assert job_id is not None and job_id.startswith("job_")
    job = job_of(stack, job_id)
    assert (job["status"], job["priority"], job["environment"]) == ("succeeded", "high", "test")
    # The proxy's body as received, and the request as sent (unknown parameters untouched).
    assert job["result"] == json.loads(raw.http_response.text)
    stored = json.loads(stack.redis.hget(f"llmq:job:{job_id}", "request") or "{}")
    assert stored == {"model": model, "messages": GUIDE_MESSAGES, "temperature": 0.2}
    assert len(mock_proxy.calls(model)) == 2


def test_guide_streaming_example_relays_the_proxys_chunks(stack: Stack, model: str, sdk: SdkFactory) -> None:
    client = sdk(stack)
    chunks = list(client.chat.completions.create(
        model=model, messages=GUIDE_MESSAGES, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: 你是谁？"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-mock-")
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_stream_is_the_proxys_bytes_and_ends_with_done(stack: Stack, model: str) -> None:
    body = {"model": model, "messages": GUIDE_MESSAGES, "stream": True, "vendor_flag": {"keep": True}}
    with stack.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        job_id = response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    payloads = [line.removeprefix("data: ") for line in lines[:-1]]
    # Verbatim: the mock writes compact JSON, and so do the relayed lines.
    assert all(p == json.dumps(json.loads(p), separators=(",", ":")) for p in payloads)
    job = job_of(stack, job_id)
    assert job["status"] == "succeeded" and job["stream"] is True
    assert "".join(json.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads) == \
        job["result"]["choices"][0]["message"]["content"]


def test_async_client_plain_and_streamed(stack: Stack, model: str) -> None:
    async def run() -> tuple[str | None, str]:
        async with AsyncOpenAI(api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1") as client:
            plain, stream = await asyncio.gather(
                client.chat.completions.create(model=model, messages=GUIDE_MESSAGES),
                client.chat.completions.create(model=model, messages=GUIDE_MESSAGES, stream=True),
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            return plain.choices[0].message.content, text

    plain_text, streamed_text = asyncio.run(run())
    assert plain_text == streamed_text == "Echo: 你是谁？"


def test_tool_calls_streamed_in_fragments(stack: Stack, model: str, sdk: SdkFactory) -> None:
    stream = sdk(stack).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "find llmq"}], tools=TOOLS, stream=True)
    fragments = [call for chunk in stream if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
    assert len(fragments) > 2
    assert fragments[0].id and fragments[0].function and fragments[0].function.name == "lookup"
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function)
    assert json.loads(arguments) == {"echo": "find llmq", "n": 1}


def test_langchain_invoke_and_stream(stack: Stack, model: str) -> None:
    llm = ChatOpenAI(model=model, api_key=CALLER_KEY, base_url=f"{stack.base_url}/v1")  # type: ignore[arg-type]
    assert llm.invoke("你是谁？").content == "Echo: 你是谁？"
    assert "".join(str(piece.content) for piece in llm.stream("streamed, please")) == "Echo: streamed, please"


# --- environments and llmq's options in headers ----------------------------------------------------------


@pytest.mark.parametrize(("base", "environment"), [("/test/v1", "test"), ("/prod/v1", "prod")])
def test_base_path_chooses_the_environment(
    stack: Stack, model: str, base: str, environment: str, sdk: SdkFactory
) -> None:
    raw = sdk(stack, base).chat.completions.with_raw_response.create(model=model, messages=GUIDE_MESSAGES)
    assert raw.request_id is not None
    assert job_of(stack, raw.request_id)["environment"] == environment


def test_llmq_options_come_in_headers(stack: Stack, model: str, sdk: SdkFactory) -> None:
    client = sdk(stack, default_headers={"llmq-priority": "low"})
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=GUIDE_MESSAGES, extra_headers={"llmq-max-attempts": "2"})
    assert raw.request_id is not None
    job = job_of(stack, raw.request_id)
    assert (job["priority"], job["max_attempts"]) == ("low", 2)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=model, messages=GUIDE_MESSAGES, extra_headers={"llmq-priority": "top"})
    assert bad.value.param == "header.llmq-priority"


# --- faults: retries invisible, final answers typed ---------------------------------------------------------


def test_500s_then_success_are_invisible(stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 500}, {"kind": "status", "status": 500})
    raw = sdk(stack, max_retries=0).chat.completions.with_raw_response.create(model=model, messages=GUIDE_MESSAGES)
    assert raw.parse().choices[0].message.content == "Echo: 你是谁？"
    assert raw.request_id is not None
    assert [a["outcome"] for a in job_of(stack, raw.request_id)["attempts"]] == ["http_500", "http_500", "ok"]
    assert len(mock_proxy.calls(model)) == 3


def test_final_400_is_the_proxys_own(stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory) -> None:
    proxy_error = {"error": {"message": "context too long: " + "x" * 900, "type": "invalid_request_error",
                             "param": "messages", "code": "context_length_exceeded"}}
    mock_proxy.script(model, {"kind": "status", "status": 400, "body": proxy_error})
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(stack, max_retries=0).chat.completions.create(model=model, messages=GUIDE_MESSAGES)
    error = caught.value
    assert error.status_code == 400
    assert error.body == proxy_error["error"]  # whole, though longer than the job's body_excerpt
    assert error.code == "context_length_exceeded" and error.param == "messages"
    assert error.request_id is not None and job_of(stack, error.request_id)["status"] == "failed"
    assert error.response.headers["x-should-retry"] == "false"
    assert len(mock_proxy.calls(model)) == 1


def test_final_5xx_is_a_502_naming_the_proxys_status(
    stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory
) -> None:
    mock_proxy.script(model, *[{"kind": "status", "status": 503}] * 2)
    # The SDK's own retries left on: x-should-retry: false keeps it from calling again.
    client = sdk(stack, default_headers={"llmq-max-attempts": "2"})
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model=model, messages=GUIDE_MESSAGES)
    error = caught.value
    assert error.status_code == 502
    assert "503" in error.message and error.code == "upstream_503"
    assert error.response.headers["x-should-retry"] == "false"
    assert len(mock_proxy.calls(model)) == 2


def test_wait_bound_answers_504_and_the_job_goes_on(
    stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory
) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 3000})
    client = sdk(stack, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=model, messages=GUIDE_MESSAGES, extra_headers={"Prefer": "wait=1"})
    error = caught.value
    assert error.status_code == 504
    job_id = error.request_id
    assert job_id is not None and job_id in error.message
    assert error.response.headers["x-should-retry"] == "false"
    with stack.client() as http:
        assert wait_finished(http, job_id)["status"] == "succeeded"


def test_sdk_timeout_sets_the_wait(stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory) -> None:
    # The SDK sends its read timeout (x-stainless-read-timeout: 2.0); llmq answers just before it runs out.
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 4000})
    with pytest.raises(openai.APIStatusError) as caught:
        sdk(stack, max_retries=0, timeout=2.0).chat.completions.create(model=model, messages=GUIDE_MESSAGES)
    assert caught.value.status_code == 504 and caught.value.code == "wait_exceeded"


def test_cut_before_the_first_chunk_is_retried_unseen(
    stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory
) -> None:
    mock_proxy.script(model, {"kind": "stream_cut", "chunks": 0}, {"kind": "reset"})
    stream = sdk(stack, max_retries=0).chat.completions.with_raw_response.create(
        model=model, messages=GUIDE_MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    assert text == "Echo: 你是谁？"
    assert stream.request_id is not None
    assert [a["outcome"] for a in job_of(stack, stream.request_id)["attempts"]] == [
        "stream_incomplete", "connection_error", "ok"]


def test_cut_after_text_was_sent_ends_with_an_error_never_spliced(
    stack: Stack, mock_proxy: MockProxy, model: str, sdk: SdkFactory) -> None:
    mock_proxy.script(model, {"kind": "stream_cut", "chunks": 3, "seconds": 0.5})
    stream = sdk(stack, max_retries=0).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "one two three four five six"}], stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream.parse():
            received.append(chunk.choices[0].delta.content or "")
    assert caught.value.code == "stream_interrupted"
    text = "".join(received)
    assert text and "Echo: one two three four five six".startswith(text) and text != "Echo: one two three four five six"
    assert stream.request_id is not None
    job_id = stream.request_id
    eventually(lambda: job_of(stack, job_id)["status"] == "cancelled", 10, "the interrupted job to be cancelled")


# --- llmq's own errors, detaching, leaving ----------------------------------------------------------------------


def test_bad_key_and_bad_body_are_typed(stack: Stack, model: str, sdk: SdkFactory) -> None:
    with pytest.raises(openai.AuthenticationError) as unauthorized:
        sdk(stack, api_key="no-colon").chat.completions.create(model=model, messages=GUIDE_MESSAGES)
    assert "appID:appKey" in unauthorized.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(stack).chat.completions.create(model=model, messages=[])
    assert bad.value.param == "messages" and bad.value.type == "invalid_request_error"


def test_error_shapes_stay_apart(stack: Stack) -> None:
    with stack.client() as client:
        openai_shape = client.post("/v1/chat/completions", json={"model": "m"}).json()
        jobs_shape = client.post("/v1/jobs", json={"request": {"model": "m"}}).json()
    assert set(openai_shape["error"]) == {"message", "type", "param", "code"}
    assert "param" not in jobs_shape["error"] and jobs_shape["error"]["type"] == "invalid_request"


def test_respond_async_answers_202_with_the_job(stack: Stack, model: str) -> None:
    body = {"model": model, "messages": GUIDE_MESSAGES}
    with stack.client() as client:
        response = client.post("/v1/chat/completions", json=body, headers={"Prefer": "respond-async"})
        assert response.status_code == 202
        assert response.headers["preference-applied"] == "respond-async"
        job = response.json()
        assert response.headers["x-request-id"] == job["id"] and response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert wait_finished(client, job["id"])["result"]["choices"][0]["message"]["content"] == "Echo: 你是谁？"


def test_a_caller_that_leaves_cancels_its_job(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 5000})
    body = {"model": model, "messages": GUIDE_MESSAGES}
    with stack.client() as client, pytest.raises(httpx2.ReadTimeout):
        client.post("/v1/chat/completions", json=body, timeout=httpx2.Timeout(5, read=1))
    eventually(lambda: mock_proxy.calls(model), 5, "the proxy call")
    records = [key for key in stack.redis.scan_iter("llmq:job:job_*", count=10_000) if key.count(":") == 2]
    (record,) = [key for key in records if stack.redis.hget(key, "model") == model]
    eventually(lambda: stack.redis.hget(record, "status") == "cancelled", 10, "the left job to be cancelled")


def test_redis_down_is_a_503(mock_proxy: MockProxy, tmp_path: Path, sdk: SdkFactory) -> None:
    dead = Stack(f"redis://127.0.0.1:{free_port()}/0", mock_proxy.url, tmp_path,
                 LLMQ_REDIS_SOCKET_TIMEOUT_S="1")
    try:
        dead.start_api()
        with pytest.raises(openai.InternalServerError) as caught:
            sdk(dead, max_retries=0).chat.completions.create(model="m", messages=GUIDE_MESSAGES)
        assert caught.value.status_code == 503
        assert caught.value.response.headers["retry-after"] == "5"
    finally:
        dead.stop()
