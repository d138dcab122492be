"""Webhooks through real processes and a real receiver on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from llmq.devstack.redis_server import RedisServer
from llmq.worker.webhooks.callback import new_secret
from tests.receiver import Receiver
from tests.stack import WEBHOOK_SECRET, MockProxy, Stack, chat, submit, wait_until

DONE = ("delivered", "failed", "gone")


def callback_settled(job: dict) -> bool:  # type: ignore[type-arg]
    return job.get("callback_status") in DONE


def test_event_is_signed_and_carries_the_job(stack: Stack, model: str) -> None:
    with Receiver() as receiver, stack.client() as client:
        job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        job = wait_until(client, job_id, callback_settled)
    assert job["callback_status"] == "delivered"
    assert len(receiver.received) == 1
    hit = receiver.received[0]
    Webhook(WEBHOOK_SECRET).verify(hit.body, hit.headers)  # raises if the signature is wrong
    with pytest.raises(Exception, match="signature"):
        Webhook(new_secret()).verify(hit.body, hit.headers)
    event = json.loads(hit.body)
    assert event["type"] == "job.succeeded"
    assert event["data"]["id"] == job_id and event["data"]["status"] == "succeeded"
    assert event["data"]["result"] == job["result"]
    assert event["data"]["attempts"] == job["attempts"]
    assert hit.headers["webhook-id"] == f"msg_{job_id}"
    assert hit.path == "/hook"


def test_per_job_secret_signs_instead_of_the_service_one(stack: Stack, model: str) -> None:
    secret = new_secret()
    with Receiver() as receiver, stack.client() as client:
        job_id = submit(client, chat(model), callback_url=receiver.url, callback_secret=secret)["id"]
        wait_until(client, job_id, callback_settled)
    hit = receiver.received[0]
    Webhook(secret).verify(hit.body, hit.headers)
    with pytest.raises(Exception, match="signature"):
        Webhook(WEBHOOK_SECRET).verify(hit.body, hit.headers)


def test_500_twice_then_200_arrives_three_times_under_one_id(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    with Receiver() as receiver, stack.client() as client:
        receiver.statuses.extend([500, 500])
        job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        job = wait_until(client, job_id, callback_settled)
    assert job["callback_status"] == "delivered"
    assert [d["status_code"] for d in job["deliveries"]] == [500, 500, 200]
    assert len({hit.headers["webhook-id"] for hit in receiver.received}) == 1
    assert len(receiver.received) == 3
    assert len(mock_proxy.calls(model)) == 1


def test_a_receiver_that_is_down_and_comes_back_gets_it(stack: Stack, model: str) -> None:
    receiver = Receiver()  # its port is chosen but nothing listens yet
    with stack.client() as client:
        job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        wait_until(client, job_id, lambda job: len(job.get("deliveries", [])) >= 2)
        with receiver:
            job = wait_until(client, job_id, callback_settled)
    assert job["callback_status"] == "delivered"
    assert all(d["error"] for d in job["deliveries"][:-1])
    assert job["deliveries"][-1]["status_code"] == 200
    assert len(receiver.received) == 1


def test_410_stops_retrying(stack: Stack, model: str) -> None:
    with Receiver(default_status=410) as receiver, stack.client() as client:
        job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        job = wait_until(client, job_id, callback_settled)
    assert job["callback_status"] == "gone"
    assert len(job["deliveries"]) == 1 and len(receiver.received) == 1


def test_failing_delivery_never_calls_the_proxy_again_and_can_be_resent(
    stack: Stack, mock_proxy: MockProxy, model: str
) -> None:
    with Receiver(default_status=500) as receiver, stack.client() as client:
        job_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        job = wait_until(client, job_id, callback_settled)
        assert job["callback_status"] == "failed"
        assert job["status"] == "succeeded"
        assert len(job["deliveries"]) == 7 == len(receiver.received)
        assert len(mock_proxy.calls(model)) == 1

        receiver.default_status = 200
        resent = client.post(f"/v1/jobs/{job_id}/callback/retry")
        assert resent.status_code == 202
        job = wait_until(client, job_id, lambda j: j.get("callback_status") == "delivered")
        assert client.post(f"/v1/jobs/{job_id}/callback/retry").status_code == 409
    assert len(mock_proxy.calls(model)) == 1


def test_failed_and_cancelled_jobs_are_pushed_too(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 400})
    with Receiver() as receiver, stack.client() as client:
        failed_id = submit(client, chat(model), callback_url=receiver.url)["id"]
        assert wait_until(client, failed_id, callback_settled)["status"] == "failed"
        mock_proxy.script(model + "-slow", {"kind": "ok", "latency_ms": 3000})
        cancelled_id = submit(client, chat(model + "-slow"), callback_url=receiver.url, priority="low")["id"]
        assert client.delete(f"/v1/jobs/{cancelled_id}").status_code == 200
        wait_until(client, cancelled_id, callback_settled)
    types = sorted(json.loads(hit.body)["type"] for hit in receiver.received)
    assert types == ["job.cancelled", "job.failed"]


@pytest.fixture(scope="module")
def strict_api(redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path) -> Iterator[Stack]:
    """An API with no allow-list and no service webhook secret."""
    running = Stack(redis_server.url, mock_proxy.url, log_dir / "strict", LLMQ_CALLBACK_ALLOW="",
                    LLMQ_WEBHOOK_SECRET="")
    try:
        yield running.start_api()
    finally:
        running.stop()


REFUSED = [
    "http://127.0.0.1/hook", "http://localhost/hook", "http://10.0.0.1/", "http://172.16.0.1/",
    "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data", "http://[::1]/", "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0/", "http://2130706433/", "http://0x7f000001/", "http://127.1/", "http://localhost.:8080/",
    "file:///etc/passwd", "ftp://example.com/x",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_callbacks_are_refused_at_submission(strict_api: Stack, url: str) -> None:
    with strict_api.client() as client:
        response = client.post("/v1/jobs", json={"request": chat("m"), "callback_url": url,
                                                 "callback_secret": new_secret()})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["message"].startswith("callback_url:")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"callback_url": "https://hooks.example.com/x"}, "callback_secret: required"),
        ({"callback_url": "https://hooks.example.com/x", "callback_secret": "abc"}, "callback_secret: "),
        ({"callback_secret": new_secret()}, "callback_secret: given without a callback_url"),
    ],
)
def test_callback_secret_rules(strict_api: Stack, fields: dict[str, str], message: str) -> None:
    with strict_api.client() as client:
        response = client.post("/v1/jobs", json={"request": chat("m"), **fields})
    assert response.status_code == 422
    assert message in response.json()["error"]["message"]
