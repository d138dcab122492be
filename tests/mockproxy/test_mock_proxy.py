"""End-to-end tests of the mock upstream proxy, run as a real subprocess."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_ID, APP_KEY = "app-tests", "s3cr3t-key-value"
AUTH = {"Authorization": f"Bearer {APP_ID}:{APP_KEY}"}
STARTUP_TIMEOUT_S = 10.0


def _clean_env() -> dict[str, str]:
    # Settings of a developer's shell must not leak into the mock under test.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_MOCK_")}
    return env


def _start(args: list[str], stderr_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmq.mockproxy", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=stderr, cwd=ROOT, env=_clean_env(),
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT_S)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("mock proxy listening on http://"):
        _stop(proc)
        pytest.fail(f"mock did not start: {line!r}\n{stderr_path.read_text()}")
    return proc, line.split()[-1]


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return code


@pytest.fixture(scope="module")
def mock_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = _start([], tmp_path_factory.mktemp("mockproxy") / "stderr.log")
    try:
        yield url
    finally:
        assert _stop(proc) == 0


@pytest.fixture(scope="module")
def client(mock_url: str) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=mock_url, timeout=5.0) as c:
        yield c


@pytest.fixture(scope="module")
def admin(mock_url: str) -> Iterator[httpx2.Client]:
    root = mock_url.removesuffix("/openai-compatible/v1")
    with httpx2.Client(base_url=f"{root}/_mock", timeout=5.0) as c:
        yield c


@pytest.fixture
def model() -> str:
    # A model name per test keeps scripts and call records of different tests apart.
    return f"test-model-{uuid.uuid4().hex[:8]}"


def _body(model: str, text: str = "hello mock world", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "system", "content": "be brief"},
                                         {"role": "user", "content": text}], **extra}


def _sse(client: httpx2.Client, body: dict[str, Any]) -> list[str]:
    with client.stream("POST", "/chat/completions", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def _chunks(events: list[str]) -> list[dict[str, Any]]:
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def _script(admin: httpx2.Client, model: str, steps: list[dict[str, Any]]) -> None:
    response = admin.post("/scripts", json={"model": model, "responses": steps})
    assert response.status_code == 200, response.text


def test_health(admin: httpx2.Client) -> None:
    assert admin.get("/health").json() == {"ok": True}


@pytest.mark.parametrize("header", [None, "Bearer nocolon", "Bearer :key", "Bearer id:", "Bearer a:b:c",
                                    "Basic a:b", "Bearer a b:c"])
def test_malformed_key_is_rejected(client: httpx2.Client, model: str, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client.post("/chat/completions", json=_body(model), headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": {"message": "Invalid API key: expected 'Bearer appID:appKey'",
                                         "type": "invalid_request_error", "code": "invalid_api_key"}}


@pytest.mark.parametrize("body", [[1], {"model": "m"}, {"model": "m", "messages": []}, {"messages": [{}]}])
def test_invalid_body_is_400(client: httpx2.Client, body: Any) -> None:
    response = client.post("/chat/completions", json=body, headers=AUTH)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_completion_is_deterministic(client: httpx2.Client, model: str) -> None:
    first = client.post("/chat/completions", json=_body(model), headers=AUTH)
    second = client.post("/chat/completions", json=_body(model), headers=AUTH)
    other = client.post("/chat/completions", json=_body(model, "something else"), headers=AUTH)
    assert first.status_code == 200
    data = first.json()
    assert data["id"].startswith("chatcmpl-mock-") and len(data["id"]) == len("chatcmpl-mock-") + 24
    assert data["id"] == second.json()["id"] != other.json()["id"]
    assert data["object"] == "chat.completion" and data["model"] == model
    assert isinstance(data["created"], int)
    message = {"role": "assistant", "content": "Echo: hello mock world"}
    assert data["choices"] == [{"index": 0, "message": message, "finish_reason": "stop"}]
    assert data["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


def test_content_parts_are_joined(client: httpx2.Client, model: str) -> None:
    parts = [{"type": "text", "text": "one"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "text", "text": "two"}]
    body = {"model": model, "messages": [{"role": "user", "content": parts}]}
    response = client.post("/chat/completions", json=body, headers=AUTH)
    assert response.json()["choices"][0]["message"]["content"] == "Echo: one two"


def test_stream_matches_plain_answer(client: httpx2.Client, model: str) -> None:
    plain = client.post("/chat/completions", json=_body(model), headers=AUTH).json()
    chunks = _chunks(_sse(client, _body(model, stream=True)))
    assert {c["id"] for c in chunks} == {plain["id"]}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert len(deltas) > 3
    assert "".join(d.get("content", "") for d in deltas) == plain["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


def test_stream_include_usage(client: httpx2.Client, model: str) -> None:
    plain = client.post("/chat/completions", json=_body(model), headers=AUTH).json()
    chunks = _chunks(_sse(client, _body(model, stream=True, stream_options={"include_usage": True})))
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain["usage"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_tool_call_plain_and_stream(client: httpx2.Client, model: str) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    plain = client.post("/chat/completions", json=_body(model, tools=tools), headers=AUTH).json()
    choice = plain["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_mock_") and call["type"] == "function"
    assert call["function"]["name"] == "lookup"
    assert json.loads(call["function"]["arguments"]) == {"echo": "hello mock world", "n": 1}

    chunks = _chunks(_sse(client, _body(model, tools=tools, stream=True)))
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[:-1]]
    assert fragments[0] == {"index": 0, "id": call["id"], "type": "function",
                            "function": {"name": "lookup", "arguments": ""}}
    assert len(fragments) >= 4  # the opening fragment plus at least three argument pieces
    assert "".join(f["function"]["arguments"] for f in fragments) == call["function"]["arguments"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_script_is_served_in_order(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "status", "status": 500},
                           {"kind": "status", "status": 429, "headers": {"Retry-After": "2"}},
                           {"kind": "ok"}])
    first = client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert first.status_code == 500
    assert first.json()["error"]["type"] == "server_error"
    second = client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert second.status_code == 429
    assert second.headers["retry-after"] == "2"
    assert client.post("/chat/completions", json=_body(model), headers=AUTH).status_code == 200
    # Exhausted: plain answers from now on.
    assert client.post("/chat/completions", json=_body(model), headers=AUTH).status_code == 200
    calls = admin.get("/calls", params={"model": model}).json()
    assert [c["outcome"] for c in calls["calls"]] == ["status", "status", "ok", "ok"]
    assert [c["status"] for c in calls["calls"]] == [500, 429, 200, 200]


def test_status_step_with_custom_body(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "status", "status": 400, "body": {"error": {"message": "nope"}},
                            "headers": {"retry-after-ms": "1500"}}])
    response = client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert response.status_code == 400
    assert response.json() == {"error": {"message": "nope"}}
    assert response.headers["retry-after-ms"] == "1500"


def test_a_step_can_repeat_a_header(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "status", "status": 429,
                            "headers": [["Retry-After", "nan"], ["Retry-After", "2"], ["Content-Type", "text/x"]]}])
    response = client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert response.status_code == 429
    assert response.headers.get_list("retry-after") == ["nan", "2"]
    assert response.headers["content-type"] == "text/x"


def test_reset_is_a_transport_error(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "reset"}])
    with pytest.raises(httpx2.TransportError):
        client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert client.post("/chat/completions", json=_body(model), headers=AUTH).status_code == 200


def test_hang_times_out(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "hang", "seconds": 5}])
    with pytest.raises(httpx2.TimeoutException):
        client.post("/chat/completions", json=_body(model), headers=AUTH, timeout=0.3)
    assert admin.get("/calls", params={"model": model}).json()["calls"][0]["outcome"] == "hang"


def test_garbage_alternates(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "garbage"}, {"kind": "garbage"}])
    bodies = [client.post("/chat/completions", json=_body(model), headers=AUTH) for _ in range(2)]
    assert [b.status_code for b in bodies] == [200, 200]
    texts = sorted(b.text for b in bodies)
    assert texts[0] == "<html>upstream hiccup</html>"
    assert json.loads(texts[1]) == {"code": 500, "msg": "internal error"}


def test_stream_cut(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "stream_cut"}])
    events = _sse(client, _body(model, "a b c d e f g h", stream=True))
    assert events and "[DONE]" not in events
    assert all(json.loads(e)["choices"][0]["finish_reason"] is None for e in events)


def test_slow_ok_step(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "ok", "latency_ms": 150}])
    response = client.post("/chat/completions", json=_body(model), headers=AUTH)
    assert response.status_code == 200
    assert response.elapsed.total_seconds() >= 0.14


def test_clearing_a_script(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    _script(admin, model, [{"kind": "status", "status": 503}])
    assert admin.get("/scripts").json()["scripts"][model] == 1
    assert admin.delete("/scripts", params={"model": model}).status_code == 200
    assert client.post("/chat/completions", json=_body(model), headers=AUTH).status_code == 200


def test_bad_script_is_rejected(admin: httpx2.Client, model: str) -> None:
    response = admin.post("/scripts", json={"model": model, "responses": [{"kind": "status"}]})
    assert response.status_code == 400


def test_calls_show_app_id_but_never_the_key(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    for stream in (False, True):
        client.post("/chat/completions", json=_body(model, stream=stream), headers=AUTH)
    response = admin.get("/calls", params={"model": model})
    assert APP_KEY not in response.text
    data = response.json()
    assert data["count"] == 2
    assert [(c["model"], c["app_id"], c["stream"], c["outcome"]) for c in data["calls"]] == [
        (model, APP_ID, False, "ok"), (model, APP_ID, True, "ok")]
    assert all(isinstance(c["at"], float) for c in data["calls"])
    assert APP_KEY not in admin.get("/calls").text
    assert APP_KEY not in admin.get("/config").text


def test_global_500_rate(client: httpx2.Client, admin: httpx2.Client, model: str) -> None:
    assert admin.post("/config", json={"fail_500_rate": 1.0}).json()["fail_500_rate"] == 1.0
    try:
        statuses = {client.post("/chat/completions", json=_body(model), headers=AUTH).status_code
                    for _ in range(5)}
        assert statuses == {500}
    finally:
        admin.post("/config", json={"fail_500_rate": 0})
    assert client.post("/chat/completions", json=_body(model), headers=AUTH).status_code == 200


def test_invalid_config_is_rejected(admin: httpx2.Client) -> None:
    assert admin.post("/config", json={"fail_500_rate": 2}).status_code == 400
    assert admin.post("/config", json={"no_such_setting": 1}).status_code == 400
    assert admin.get("/config").json()["fail_500_rate"] == 0


def test_cli_allow_lists_and_clean_stop(tmp_path: Path) -> None:
    proc, url = _start(["--model", "known", "--accept-key", "app:key"], tmp_path / "stderr.log")
    try:
        with httpx2.Client(base_url=url, timeout=5.0) as c:
            good = {"Authorization": "Bearer app:key"}
            assert c.post("/chat/completions", json=_body("known"), headers=good).status_code == 200
            assert c.post("/chat/completions", json=_body("known"), headers=AUTH).status_code == 401
            unknown = c.post("/chat/completions", json=_body("other"), headers=good)
            assert unknown.status_code == 404
            assert unknown.json()["error"] == {"message": "The model `other` does not exist",
                                               "type": "invalid_request_error", "code": "model_not_found"}
    finally:
        assert _stop(proc) == 0
