"""A proxy that sends hostile headers: every job is retried on the backoff and finishes; reading it never fails."""

from __future__ import annotations

import math
import time
from typing import Any

from tests.stack import MockProxy, Stack, chat, submit

# Retry-After and retry-after-ms values that mean nothing usable (as the mock's step headers: pairs may repeat).
HOSTILE_HEADERS: dict[str, list[list[str]]] = {
    "nan": [["Retry-After", "nan"]],
    "infinity": [["Retry-After", "inf"]],
    "negative infinity": [["Retry-After", "-Infinity"]],
    "negative": [["Retry-After", "-30"]],
    "huge": [["Retry-After", "1e400"]],
    "date in the past": [["Retry-After", "Thu, 01 Jan 1970 00:00:00 GMT"]],
    "date far in the future": [["Retry-After", "Fri, 31 Dec 9999 23:59:59 GMT"]],
    "not a number": [["Retry-After", "soon"]],
    "empty": [["Retry-After", ""]],
    "repeated": [["Retry-After", "nan"], ["Retry-After", "1"]],
    "ms nan": [["retry-after-ms", "NaN"]],
    "ms infinity": [["retry-after-ms", "Infinity"]],
    "ms negative": [["retry-after-ms", "-1000"]],
}


def test_hostile_retry_after_headers_are_retried_and_every_read_answers(
    stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    cap_s = float(stack.env["LLMQ_RETRY_AFTER_CAP_S"])
    models = {name: f"{model}-{i}" for i, name in enumerate(HOSTILE_HEADERS)}
    for name, headers in HOSTILE_HEADERS.items():
        mock_proxy.script(models[name], {"kind": "status", "status": 429, "headers": headers})
    statuses: list[int] = []
    with stack.client() as client:
        ids = {name: submit(client, chat(models[name]))["id"] for name in HOSTILE_HEADERS}
        finished: dict[str, dict[str, Any]] = {}
        deadline = time.monotonic() + 60
        # Read each job over and over while it is retried: each read must answer 200 with valid JSON.
        while len(finished) < len(ids) and time.monotonic() < deadline:
            for name, job_id in ids.items():
                if name in finished:
                    continue
                response = client.get(f"/v1/jobs/{job_id}")
                statuses.append(response.status_code)
                assert response.status_code == 200, f"{name}: {response.status_code} {response.text[:200]}"
                job = response.json()
                if job["status"] in ("succeeded", "failed", "cancelled"):
                    finished[name] = job
            time.sleep(0.05)
    assert set(finished) == set(ids), f"still unfinished: {sorted(set(ids) - set(finished))}"
    for name, job in finished.items():
        assert job["status"] == "succeeded", name
        first, second = job["attempts"]
        assert first["outcome"] == "http_429" and second["outcome"] == "ok", name
        # The backoff (LLMQ_RETRY_BASE_DELAY_S=0.2) was used, or for a far-future date the cap: never NaN.
        assert math.isfinite(first["retry_in_s"]) and 0 < first["retry_in_s"] <= cap_s, (name, first)
    assert len(statuses) > len(ids)
