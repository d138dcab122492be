"""Callers choose model names freely; the worker's /metrics must not grow with them."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx2

from llmq.devstack.redis_server import RedisServer, free_port
from tests.stack import MockProxy, Stack, chat, submit, wait_finished

DISTINCT_MODELS = 300


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_300_invented_model_names_add_no_series(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], record_figures: Callable[..., None]
) -> None:
    with RedisServer(appendonly=False) as redis_server:
        port = free_port()
        stack = make_stack(redis_server.url, mock_proxy.url, "bounded-metrics", LLMQ_WORKER_METRICS_PORT=str(port),
                           LLMQ_METRICS_MODELS="metrics-known-model")
        stack.start_api()
        stack.start_worker()
        metrics_url = f"http://127.0.0.1:{port}/metrics"
        with stack.client() as client:
            # One job of a listed model and one of another, so every series the load could touch exists.
            wait_finished(client, submit(client, chat("metrics-known-model"))["id"])
            wait_finished(client, submit(client, chat(f"warm-up-{uuid.uuid4().hex}"))["id"])
            before = httpx2.get(metrics_url, timeout=5).text
            invented = [f"invented-{uuid.uuid4().hex}" for _ in range(DISTINCT_MODELS)]
            response = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(name)} for name in invented]})
            assert response.status_code == 202 and response.json()["accepted"] == DISTINCT_MODELS
            stack.wait_all_finished(90)
        after = httpx2.get(metrics_url, timeout=5).text
    record_figures("invented model names", jobs=DISTINCT_MODELS, metrics_bytes_before=len(before),
                   metrics_bytes_after=len(after), series_before=len(series(before)), series_after=len(series(after)))
    assert not any(name in after for name in invented)
    assert len(series(after)) == len(series(before))
    assert 'model="metrics-known-model"' in after and 'model="other"' in after
    assert 'app_id="other"' in after  # no app id listed in LLMQ_METRICS_APP_IDS
