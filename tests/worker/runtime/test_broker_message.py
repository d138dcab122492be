"""The message the submit script pushes is the one Celery itself would publish (a real Redis decides)."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.celery_app import create_celery
from llmq.worker.runtime.broker_message import call_proxy_message
from llmq.worker.settings import load_settings

VARYING = {"id", "root_id", "origin", "correlation_id", "delivery_tag", "reply_to"}


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url)
    client.flushdb()  # db 11 of the test Redis belongs to this module
    yield url
    client.close()


def without_varying(part: dict) -> dict:  # type: ignore[type-arg]
    return {k: v for k, v in part.items() if k not in VARYING}


def test_matches_a_message_published_by_celery(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    app = create_celery(load_settings(redis_url=redis_url))
    app.send_task("llmq.call_proxy", args=["job_x"], queue="llmq.high", argsrepr="('job_x', model='m')",
                  kwargsrepr="{}", ignore_result=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    (published,) = [json.loads(raw) for raw in client.lrange("llmq.high", 0, -1)]
    built = json.loads(call_proxy_message(app, "job_x", "m", "llmq.high"))

    assert set(built) == set(published)
    assert without_varying(built["headers"]) == without_varying(published["headers"])
    assert without_varying(built["properties"]) == without_varying(published["properties"])
    assert base64.b64decode(built["body"]) == base64.b64decode(published["body"])
    assert built["headers"]["id"] == built["headers"]["root_id"] == built["properties"]["correlation_id"]
    # Parts are built once and reused: each message still gets its own ids, job and queue.
    other = json.loads(call_proxy_message(app, "job_y", 'm "2"', "llmq.low"))
    assert other["headers"]["id"] != built["headers"]["id"]
    assert all(uuid.UUID(m["headers"]["id"]).version == 4 for m in (built, other, published))
    assert other["properties"]["delivery_tag"] != built["properties"]["delivery_tag"]
    assert json.loads(base64.b64decode(other["body"]))[0] == ["job_y"]
    assert other["headers"]["argsrepr"] == """('job_y', model='m "2"')"""
    assert other["properties"]["delivery_info"]["routing_key"] == "llmq.low"
    assert built["headers"]["argsrepr"] == "('job_x', model='m')"
    client.close()
