"""Bad input gets a clear 4xx with an actionable message, through the real API process."""

from __future__ import annotations

import socket

import pytest

from tests.stack import CALLER_KEY, Stack, chat, submit, wait_finished

GOOD = {"request": chat("m")}


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({}, 422, "request"),
        ({"request": {"messages": [{"role": "user", "content": "x"}]}}, 422, "request.model"),
        ({"request": {"model": "m"}}, 422, "request.messages"),
        ({"request": {"model": "m", "messages": []}}, 422, "request.messages"),
        ({"request": {"model": "m", "messages": [{"content": "x"}]}}, 422, "request.messages.0.role"),
        ({"request": {"model": "m", "messages": [{"role": "robot", "content": "x"}]}}, 422, "request.messages.0.role"),
        ({"request": {"model": "", "messages": [{"role": "user", "content": "x"}]}}, 422, "request.model"),
        ({**GOOD, "priority": "urgent"}, 422, "priority"),
        ({**GOOD, "environment": "staging"}, 422, "environment"),
        ({**GOOD, "max_attempts": 0}, 422, "max_attempts"),
        ({**GOOD, "max_attempts": 11}, 422, "max_attempts"),
        ({**GOOD, "unknown_field": 1}, 422, "unknown_field"),
        ({**GOOD, "metadata": "not an object"}, 422, "metadata"),
        ([1, 2], 422, "body"),
        # Fields take their own types only: no coercion of booleans, strings or floats.
        ({**GOOD, "max_attempts": True}, 422, "max_attempts"),
        ({**GOOD, "max_attempts": "3"}, 422, "max_attempts"),
        ({**GOOD, "max_attempts": 3.0}, 422, "max_attempts"),
        ({**GOOD, "priority": 1}, 422, "priority"),
        ({**GOOD, "environment": True}, 422, "environment"),
        ({**GOOD, "callback_url": 42}, 422, "callback_url"),
        ({"request": {**chat("m"), "stream": "yes"}}, 422, "request.stream"),
        ({"request": {**chat("m"), "stream": 1}}, 422, "request.stream"),
        ({"request": {**chat("m"), "model": 42}}, 422, "request.model"),
        ({"request": {"model": "m", "messages": [{"role": "user", "content": 42}]}}, 422, "request.messages.0"),
    ],
)
def test_invalid_jobs_get_422_naming_the_field(stack: Stack, body: object, status: int, field: str) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"]


@pytest.mark.parametrize(
    ("content", "content_type", "status", "error_type"),
    [
        (b'{"request": ', "application/json", 400, "invalid_json"),
        (b"\xff\xfe\xfa", "application/json", 400, "invalid_json"),
        (b"request=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"request": {}}', "text/plain", 415, "unsupported_media_type"),
        (b"", "application/json", 422, "invalid_request"),
    ],
)
def test_unreadable_bodies(stack: Stack, content: bytes, content_type: str, status: int, error_type: str) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", content=content, headers={"content-type": content_type})
    assert response.status_code == status, response.text
    assert response.json()["error"]["type"] == error_type


REQUEST = '{"model": "m", "messages": [{"role": "user", "content": "NaN or Infinity, said as text"}]'


def job_body(rest: str, request_rest: str = "") -> str:
    return '{"request": ' + REQUEST + request_rest + "}" + rest + "}"


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/jobs", job_body(', "metadata": {"a": NaN}'), "metadata.a"),
        ("/v1/jobs", job_body(', "metadata": {"b": [1, Infinity]}'), "metadata.b.1"),
        ("/v1/jobs", job_body(', "metadata": {"c": -Infinity}'), "metadata.c"),
        ("/v1/jobs", job_body(', "metadata": {"d": 1e400}'), "metadata.d"),
        ("/v1/jobs", job_body(', "metadata": {"e": ' + "9" * 400 + ".0}"), "metadata.e"),
        ("/v1/jobs", job_body("", ', "temperature": NaN'), "request.temperature"),
        ("/v1/jobs", job_body("", ', "max_attempts": NaN'), "request.max_attempts"),
        ("/v1/jobs/batch", '{"jobs": [' + job_body("") + ", " + job_body("", ', "top_p": NaN') + "]}",
         "jobs.1.request.top_p"),
    ],
)
def test_nan_and_infinity_anywhere_are_422_naming_the_field(stack: Stack, path: str, body: str, field: str) -> None:
    with stack.client() as client:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"] and "not a JSON number" in error["message"]


def test_nan_said_as_text_is_fine(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", content=job_body(', "metadata": {"note": "NaN, 1e400"}'),
                               headers={"content-type": "application/json"})
    assert response.status_code == 202, response.text
    assert response.json()["metadata"] == {"note": "NaN, 1e400"}


def test_body_over_the_limit_is_413(stack: Stack) -> None:
    huge = "x" * (4 * 1024 * 1024 + 1)
    with stack.client() as client:
        response = client.post("/v1/jobs", json={"request": chat("m", huge)})
    assert response.status_code == 413
    assert "LLMQ_MAX_BODY_BYTES" in response.json()["error"]["message"]


def test_too_many_messages_is_422(stack: Stack) -> None:
    request = {"model": "m", "messages": [{"role": "user", "content": "x"}] * 10_000}
    with stack.client() as client:
        response = client.post("/v1/jobs", json={"request": request})
    assert response.status_code == 422
    assert "LLMQ_MAX_MESSAGES" in response.json()["error"]["message"]


def test_deeply_nested_json_is_a_clear_4xx(stack: Stack) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    with stack.client() as client:
        response = client.post("/v1/jobs", content=f'{{"request": {nested}}}',
                               headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500


@pytest.mark.parametrize(
    "authorization",
    ["Bearer nocolon", "Bearer :key", "Bearer id:", "Basic MTIzNDphYmM=", "Bearer a:b:c", "Bearer"],
)
def test_malformed_keys_get_401(stack: Stack, authorization: str) -> None:
    with stack.client(key=None) as client:
        response = client.post("/v1/jobs", json=GOOD, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert "Bearer appID:appKey" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("authorization", "rule"),
    [
        (b"Bearer 1234:" + b"k" * 252, "the limit is 256"),
        # The longest a head may carry (LLMQ_MAX_HEAD_BYTES, 64 KiB); longer is 431 (tests/api/test_head_limit.py).
        (b"Bearer 1234:" + b"k" * 60_000, "the limit is 256"),
        (b"Bearer 1234:cl\xc3\xa9", "printable ASCII"),  # UTF-8
        (b"Bearer 1234:cl\xe9", "printable ASCII"),  # latin-1
    ],
)
def test_keys_too_long_or_not_ascii_get_401_naming_the_rule(stack: Stack, authorization: bytes, rule: str) -> None:
    with stack.client(key=None) as client:
        response = client.post("/v1/jobs", json=GOOD, headers={"Authorization": authorization})
    assert response.status_code == 401, response.text[:300]
    message = response.json()["error"]["message"]
    assert rule in message and "Bearer appID:appKey" in message
    assert len(message) < 500  # the key itself is not echoed


def raw_request(port: int, authorization: bytes, body: bytes = b'{"request": {}}') -> bytes:
    """A request written on a socket as given: HTTP clients refuse to send control characters in a header."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Authorization: " + authorization + b"\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\nConnection: close\r\n\r\n" + body)
        return b"".join(iter(lambda: sock.recv(65536), b""))


@pytest.mark.parametrize("authorization", [b"Bearer 1234:ab\x7fc", b"Bearer 1234:ab\x01c", b"Bearer 1234:ab\x1bc"])
def test_keys_with_control_characters_get_a_4xx(stack: Stack, authorization: bytes) -> None:
    status_line = raw_request(stack.port, authorization).split(b"\r\n", 1)[0]
    status = int(status_line.split()[1])
    assert 400 <= status < 500, status_line


def test_the_longest_key_works(stack: Stack, model: str) -> None:
    key = "1234:" + "k" * 251
    assert len(key) == 256
    with stack.client(key=key) as client:
        job = wait_finished(client, submit(client, chat(model))["id"])
    assert job["status"] == "succeeded"


def test_no_key_and_no_service_key_is_401(stack: Stack) -> None:
    with stack.client(key=None) as client:
        response = client.post("/v1/jobs", json=GOOD)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_an_idempotency_key_over_255_characters_is_422(stack: Stack) -> None:
    with stack.client() as client:
        response = client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "k" * 256})
        accepted = client.post("/v1/jobs", json=GOOD, headers={"Idempotency-Key": "k" * 255})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"] == "header.idempotency-key: String should have at most 255 characters"
    assert accepted.status_code == 202


@pytest.mark.parametrize("job_id", ["job_doesnotexist12345678901", "nonsense", "job_" + "a" * 200])
def test_unknown_ids_are_404(stack: Stack, job_id: str) -> None:
    with stack.client() as client:
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 404


def test_wait_over_60s_is_422(stack: Stack) -> None:
    with stack.client() as client:
        response = client.get("/v1/jobs/job_doesnotexist12345678901", params={"wait": 61})
    assert response.status_code == 422
    assert "wait" in response.json()["error"]["message"]


def test_health_and_readiness(stack: Stack) -> None:
    with stack.client(key=None) as client:
        assert client.get("/healthz").json() == {"ok": True, "checks": {}}
        ready = client.get("/readyz")
    assert ready.status_code == 200
    checks = ready.json()["checks"]
    assert (checks["redis"], checks["broker"]) == ("ok", "ok") and checks["redis_memory"].startswith("ok: ")


def test_docs_describe_every_route(stack: Stack) -> None:
    with stack.client(key=None) as client:
        spec = client.get("/openapi.json").json()
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            assert operation.get("description") or operation.get("summary"), f"{method} {path} undocumented"
    fields = spec["components"]["schemas"]["JobCreate"]["properties"]
    assert all(fields[name].get("description") or "$ref" in fields[name] or "anyOf" in fields[name]
               for name in fields)
    assert CALLER_KEY not in str(spec)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/jobs/job_" + "a" * 22 + "/"), ("POST", "/v1/jobs/"), ("POST", "/v1/jobs/batch/"), ("GET", "/healthz/"),
    ("GET", "/v1/jobs/job_" + "a" * 22 + "/events/"),
])
def test_a_trailing_slash_is_404_not_a_redirect_from_the_host_header(stack: Stack, method: str, path: str) -> None:
    with stack.client() as client:
        response = client.request(method, path, json=GOOD, headers={"Host": "attacker.example"})
    assert response.status_code == 404, (response.status_code, response.headers.get("location"))
    assert "location" not in response.headers
    assert response.json()["error"]["type"] == "not_found"

