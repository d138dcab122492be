"""Bad input gets a clear 4xx with an actionable message, through the real API process."""

from __future__ import annotations

import pytest

from tests.stack import CALLER_KEY, Stack, chat

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
