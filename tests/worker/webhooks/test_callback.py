"""Webhook events: signatures a real verifier accepts, deliveries to a real receiver, the schedule."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from llmq.worker.webhooks.callback import (
    DEFAULT_SCHEDULE_S,
    DeliveryResult,
    build_event,
    check_secret,
    deadline_error,
    deliver,
    make_client,
    new_secret,
    next_delay_s,
    parse_schedule,
    signed_headers,
    webhook_id,
)
from llmq.worker.webhooks.callback_guard import AllowList, PinnedTarget, resolve_and_check
from tests.receiver import Receiver as DrippingReceiver

JOB = {"id": "j_123", "status": "succeeded", "created_at": 1700000000.25, "result": {"text": "héllo ✓"}}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    port: int
    status: int = 204
    requests: list[Seen] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver(port=0)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            state.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(state.status)
            if 300 <= state.status < 400:
                self.send_header("location", f"http://127.0.0.1:{state.port}/elsewhere")
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def post(
    target: PinnedTarget, headers: dict[str, str], payload: bytes, timeout_s: float = 15.0,
    client: httpx2.AsyncClient | None = None,
) -> DeliveryResult:
    """One delivery on a loop of its own, through a fresh callbacks client unless given one."""

    async def run() -> DeliveryResult:
        async with client or make_client() as c:
            return await deliver(c, target, headers, payload, timeout_s)

    return asyncio.run(run())


def local_target(port: int) -> PinnedTarget:
    return resolve_and_check(f"http://localhost:{port}/hook?x=1", AllowList.parse("localhost,127.0.0.0/8"))


def signed(secret: str) -> tuple[bytes, dict[str, str]]:
    payload = build_event(JOB, now=time.time())
    return payload, signed_headers(secret, webhook_id(JOB["id"]), int(time.time()), payload)


def test_signature_verifies_with_the_standard_library() -> None:
    secret = new_secret()
    payload, headers = signed(secret)
    event = Webhook(secret).verify(payload, headers)
    assert event["type"] == "job.succeeded"
    assert event["data"] == JOB
    assert headers["webhook-id"] == "msg_j_123"
    assert headers["content-type"] == "application/json"
    assert headers["user-agent"] == "llmq-webhooks/1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(payload, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(payload.replace(b"j_123", b"j_124"), headers)


def test_build_event_shape() -> None:
    body = build_event({**JOB, "status": "cancelled"}, now=0.5)
    assert body.startswith(b'{"type":"job.cancelled","timestamp":"1970-01-01T00:00:00.500Z","data":{')
    assert "héllo ✓".encode() in body
    assert json.loads(body)["data"]["created_at"] == 1700000000.25
    assert build_event({**JOB, "status": "failed"}, 0).startswith(b'{"type":"job.failed"')
    with pytest.raises(ValueError, match="running"):
        build_event({**JOB, "status": "running"}, 0)


def test_delivery_arrives_pinned_and_signed(receiver: Receiver) -> None:
    secret = new_secret()
    payload, headers = signed(secret)
    target = local_target(receiver.port)
    assert target.request_url == f"http://127.0.0.1:{receiver.port}/hook?x=1"

    result = post(target, headers, payload)

    assert result.ok and not result.gone and result.error is None
    assert result.status_code == 204 and result.duration_ms >= 0
    [seen] = receiver.requests
    assert seen.path == "/hook?x=1"
    assert seen.headers["host"] == f"localhost:{receiver.port}"
    assert seen.body == payload
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert seen.headers[name] == headers[name]
    assert Webhook(secret).verify(seen.body, seen.headers)["data"]["id"] == "j_123"


@pytest.mark.parametrize(
    ("status", "ok", "gone", "error"),
    [
        (200, True, False, None),
        (500, False, False, None),
        (410, False, True, None),
        (302, False, False, "redirect not followed"),
    ],
)
def test_receiver_answers(
    receiver: Receiver, status: int, ok: bool, gone: bool, error: str | None
) -> None:
    receiver.status = status
    payload, headers = signed(new_secret())
    result = post(local_target(receiver.port), headers, payload)
    assert (result.status_code, result.ok, result.gone, result.error) == (status, ok, gone, error)
    assert [seen.path for seen in receiver.requests] == ["/hook?x=1"]  # the redirect was not followed


def test_closed_port_is_an_error_not_an_exception() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    payload, headers = signed(new_secret())
    result = post(local_target(port), headers, payload, timeout_s=2)
    assert result.status_code is None and not result.ok
    assert result.error and result.error.startswith("connection to the receiver failed: ConnectError")


def test_https_sends_the_name_for_tls() -> None:
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, content=b"x" * 200_000)

    target = PinnedTarget("https://hooks.example/h", "https", "hooks.example", 443, "/h", "93.184.215.14")
    result = post(target, {"Host": "spoofed", "a": "b"}, b"{}",
                  client=httpx2.AsyncClient(transport=httpx2.MockTransport(handler)))
    assert result.ok
    [request] = seen
    assert str(request.url) == "https://93.184.215.14/h"
    assert request.extensions["sni_hostname"] == "hooks.example"
    assert request.headers.get_list("host") == ["hooks.example"]
    assert request.headers["a"] == "b"


def test_a_receiver_that_drips_its_headers_is_cut_at_the_deadline() -> None:
    # Every read is short; only a deadline for the whole answer stops it.
    with DrippingReceiver(drip_s=30, drip_every_s=0.1) as dripping:
        payload, headers = signed(new_secret())
        result = post(local_target(dripping.port), headers, payload, timeout_s=1)
        answered = dripping.answered  # the attempt ended before the receiver finished its answer
    assert result.status_code is None and not result.ok
    assert result.error == deadline_error(1)
    assert answered == 0 and len(dripping.received) == 1


def test_to_record() -> None:
    result = DeliveryResult(status_code=None, error="ConnectError: refused", duration_ms=1.5)
    assert result.to_record(3, 100.0) == {
        "n": 3,
        "at": 100.0,
        "status_code": None,
        "error": "ConnectError: refused",
        "duration_ms": 1.5,
    }


def test_schedule() -> None:
    assert next_delay_s(0) == 0
    assert next_delay_s(1) == 5
    assert next_delay_s(len(DEFAULT_SCHEDULE_S) - 1) == DEFAULT_SCHEDULE_S[-1]
    assert next_delay_s(len(DEFAULT_SCHEDULE_S)) is None
    assert next_delay_s(99, (0, 1)) is None
    assert 24 * 3600 < sum(DEFAULT_SCHEDULE_S) < 30 * 3600
    assert parse_schedule("0, 5,300.5") == (0, 5, 300.5)


@pytest.mark.parametrize("spec", ["", " ", "0,,5", "0,-1", "a,1", "1,inf", "nan"])
def test_parse_schedule_errors(spec: str) -> None:
    with pytest.raises(ValueError, match="webhook schedule"):
        parse_schedule(spec)


def test_secrets() -> None:
    secret = new_secret()
    assert check_secret(secret) == secret
    assert check_secret(secret.rstrip("=")) == secret.rstrip("=")
    assert new_secret() != secret


@pytest.mark.parametrize(
    "secret",
    [
        "abc",
        "whsec_",
        "whsec_!!!",
        "whsec_c2hvcnQ=",
        "whsec_" + "A" * 20 + "!!",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    ],
)
def test_bad_secrets(secret: str) -> None:
    with pytest.raises(ValueError, match="must be 'whsec_' followed by base64 of at least 16 random bytes"):
        check_secret(secret)
