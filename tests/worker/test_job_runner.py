"""One attempt at a job (`run_attempt`), as a table of cases: a real Redis, the proxy played by httpx2's MockTransport.

Each case sets up a job record, lets the proxy answer one way, runs one attempt and checks what the task is told
to do next (the `Outcome`) and the record as GET /v1/jobs/{id} shows it: status, attempts, error and retry delay.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx2
import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.job_runner import Outcome, Runtime, run_attempt
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import UNFINISHED, NewJob, dumps, new_job_id, state_event
from llmq.worker.jobs.store import JobStore
from llmq.worker.jobs.view import job_json
from llmq.worker.proxy.circuit_breaker import TRIP_FAILURES, CircuitBreaker
from llmq.worker.proxy.client import UpstreamClient
from llmq.worker.proxy.retry_policy import RetryPolicy
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import load_settings

DB = 4  # this module's own database on the suite's Redis (see tests/conftest.py for the others)
KEY = "4242:app-key"
BASE_DELAY_S = 2.0
COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}
CHUNK = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}, "finish_reason": None}]}
LAST_CHUNK = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}

Proxy = Callable[["Call"], httpx2.Response]


@dataclass
class Call:
    """What the proxy was asked, and the test's handles for what it does meanwhile."""

    request: httpx2.Request
    rt: Runtime
    job_id: str


def answer(status: int, body: Any = None, **headers: str) -> Proxy:
    def proxy(call: Call) -> httpx2.Response:
        return httpx2.Response(status, json=body if body is not None else {"error": {"message": "nope"}},
                               headers=headers)
    return proxy


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, str) else dumps(e)).encode() + b"\n\n" for e in events)


def stream(*parts: bytes, cut: bool = False) -> Proxy:
    """An event stream in `parts`; with `cut`, the connection breaks after them."""
    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part
        if cut:
            raise httpx2.RemoteProtocolError("peer closed connection without sending complete message body")

    def proxy(call: Call) -> httpx2.Response:
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=body())
    return proxy


def cancelled_meanwhile(call: Call) -> httpx2.Response:
    """The caller cancels the job (DELETE /v1/jobs/{id}) while the proxy is still answering."""
    now = time.time()
    script = job_scripts.transition_call(call.job_id, "cancelled", UNFINISHED, now, state_event("cancelled", now), 60)
    assert call.rt.redis.eval(job_scripts.TRANSITION, len(script.keys), *script.keys, *script.args)[0] == "ok"
    return httpx2.Response(200, json=COMPLETION)


@dataclass(frozen=True)
class Case:
    proxy: Proxy | None  # None: the proxy must not be called at all
    status: str  # the job's status afterwards, as GET shows it
    attempts: int  # attempt records GET shows
    outcome: str | None = None  # the last attempt record's outcome
    error: str | None = None  # the job's error type
    retry_s: tuple[float, float] | None = None  # the delay asked of Celery (and recorded on the attempt): low, high
    stream: bool = False
    max_attempts: int = 3
    record: dict[str, str] = field(default_factory=dict)  # fields that differ from a fresh job's
    key_token: str | None = None  # None: the caller's key, encrypted as at submission
    notify: bool = False  # the task is told to deliver the callback
    result: bool = False  # GET shows the proxy's completion
    deltas: bool = False  # listeners were told the text as it came


NOW = time.time()
EXPIRED_LEASE = {"status": "running", "lease_until": repr(NOW - 1), "started_at": repr(NOW - 100),
                 "attempt_started_at": repr(NOW - 100)}
BACKOFF = (0.75 * BASE_DELAY_S, BASE_DELAY_S)  # the first retry's delay, less up to 25 % jitter
CALLBACK = {"callback": dumps({"url": "https://hooks.example/x"}), "callback_status": "pending"}

CASES = {
    "200": Case(answer(200, COMPLETION), "succeeded", 1, "ok", result=True),
    "200 with a callback": Case(answer(200, COMPLETION), "succeeded", 1, "ok", result=True, record=CALLBACK,
                                notify=True),
    "200 streamed": Case(stream(sse(CHUNK, LAST_CHUNK, "[DONE]")), "succeeded", 1, "ok", stream=True, result=True,
                         deltas=True),
    "a stream whose last event has no blank line": Case(
        stream(sse(CHUNK, LAST_CHUNK) + b"data: [DONE]"), "succeeded", 1, "ok", stream=True, result=True, deltas=True),
    "a stream answered in one piece": Case(answer(200, COMPLETION), "succeeded", 1, "ok", stream=True, result=True),
    "429 with Retry-After": Case(answer(429, **{"Retry-After": "7"}), "retrying", 1, "http_429", retry_s=(7, 7)),
    "500 with attempts left": Case(answer(500), "retrying", 1, "http_500", retry_s=BACKOFF),
    "500 on the last attempt": Case(answer(500), "failed", 1, "http_500", "http_status", record=CALLBACK,
                                    notify=True),
    "401": Case(answer(401), "failed", 1, "http_401", "http_status"),
    "a 200 that is not a completion": Case(answer(200, {"ok": True}), "retrying", 1, "invalid_completion",
                                           retry_s=BACKOFF),
    "a cut stream": Case(stream(sse(CHUNK), cut=True), "retrying", 1, "connection_error", retry_s=BACKOFF,
                         stream=True, deltas=True),
    "a stream that ends before [DONE], last attempt": Case(stream(sse(CHUNK)), "failed", 1, "stream_incomplete",
                                                           "stream_incomplete", stream=True, max_attempts=1,
                                                           deltas=True),
    "a held lease": Case(None, "running", 0, retry_s=(3000, 3600),
                         record={"status": "running", "lease_until": "+3600", "attempt_count": "1"}),
    "a job cancelled mid-call": Case(cancelled_meanwhile, "cancelled", 1, "cancelled"),
    "a job cancelled before its message came": Case(None, "cancelled", 0, record={"status": "cancelled"}),
    "a finished job whose callback was not handed on": Case(None, "succeeded", 0,
                                                            record={"status": "succeeded", **CALLBACK}, notify=True),
    "worker_lost with attempts left": Case(answer(200, COMPLETION), "succeeded", 2, "ok", result=True,
                                           record={**EXPIRED_LEASE, "attempt_count": "1"}),
    "worker_lost at max attempts": Case(None, "failed", 2, "worker_lost", "worker_lost",
                                        record={**EXPIRED_LEASE, "attempt_count": "3"}),
    "an unreadable key": Case(None, "failed", 1, "key_unreadable", "key_unreadable",
                              key_token=KeyVault("a secret since replaced").encrypt(KEY)),
    "an environment with no proxy URL": Case(None, "failed", 1, "configuration", "configuration",
                                             record={"environment": "prod"}),
}
# "500 on the last attempt": attempts 1 and 2 were made before (their records are not the point here).
CASES["500 on the last attempt"].record.update(status="retrying", attempt_count="2")


@pytest.fixture
def rt(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    settings = load_settings(upstream_test_url="http://proxy.test/v1", retry_base_delay_s=BASE_DELAY_S)
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + f"/{DB}", decode_responses=True)
    runtime = Runtime(settings, client, JobStore(client, 3600), UpstreamClient(settings), KeyVault("x" * 32),
                      RetryPolicy(base_delay_s=BASE_DELAY_S))
    yield runtime
    client.close()


def make_job(rt: Runtime, case: Case) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token=case.key_token or rt.vault.encrypt(KEY), model="m",
                 request_json='{"model":"m","messages":[{"role":"user","content":"hi"}]}', environment="test",
                 priority="high", max_attempts=case.max_attempts, created_at=NOW - 100, app_id="4242",
                 stream=case.stream)
    # "+N": N seconds after the test runs (the table is built before a long suite).
    record = {name: repr(time.time() + float(value[1:])) if value.startswith("+") else value
              for name, value in case.record.items()}
    rt.redis.hset(redis_keys.job(job.id), mapping={**job.fields, **record})
    rt.redis.expire(redis_keys.job(job.id), 600)
    return job.id


def run_one(rt: Runtime, job_id: str, proxy: Proxy | None) -> tuple[Outcome, list[httpx2.Request]]:
    asked: list[httpx2.Request] = []

    def handle(request: httpx2.Request) -> httpx2.Response:
        asked.append(request)
        assert proxy is not None, "the proxy was called"
        return proxy(Call(request, rt, job_id))

    rt.upstream = UpstreamClient(rt.settings, transport=httpx2.MockTransport(handle))
    return run_attempt(rt, job_id), asked


def forget(rt: Runtime, job_id: str) -> None:
    rt.redis.delete(redis_keys.job(job_id), redis_keys.job_events(job_id))


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_one_attempt(rt: Runtime, case: Case) -> None:
    job_id = make_job(rt, case)
    try:
        outcome, asked = run_one(rt, job_id, case.proxy)
        job = job_json(rt.store.fields(job_id))
        events = [json.loads(entry["e"]) for _, entry in rt.redis.xrange(redis_keys.job_events(job_id))]
    finally:
        forget(rt, job_id)

    assert job["status"] == case.status
    attempts = job["attempts"]
    assert len(attempts) == case.attempts
    if case.outcome is not None:
        assert attempts[-1]["outcome"] == case.outcome
        assert attempts[-1]["n"] == int(case.record.get("attempt_count", "0")) + 1
    assert (job.get("error") or {}).get("type") == case.error
    assert (outcome.error or {}).get("type") == (case.error if case.attempts else None)
    if case.retry_s is None:
        assert outcome.retry_in_s is None
        assert "next_attempt_at" not in job
    else:
        low, high = case.retry_s
        assert outcome.retry_in_s is not None and low <= outcome.retry_in_s <= high
        if case.attempts:  # a held lease records nothing: the other delivery's attempt is still under way
            assert attempts[-1]["retry_in_s"] == round(outcome.retry_in_s, 3)
            due = datetime.fromisoformat(job["next_attempt_at"]).timestamp()
            assert abs(due - (time.time() + outcome.retry_in_s)) < 5
    assert ("result" in job) == case.result
    if case.result:
        assert job["result"]["choices"][0]["message"]["content"] == "hi"
    assert outcome.notify == case.notify
    if case.proxy is None:
        assert asked == []
    else:
        assert len(asked) == 1
        assert asked[0].headers["authorization"] == f"Bearer {KEY}"
        assert json.loads(asked[0].content)["messages"][0]["content"] == "hi"
    # A streamed attempt tells its listeners each delta as it comes, before the outcome is known.
    deltas = [event for event in events if event["type"] == "delta"]
    assert deltas[:1] == ([{"type": "delta", "attempt": 1, "index": 0, "content": "hi"}] if case.deltas else [])


# --- batch lines and the shared circuit breaker ---------------------------------------------------------------


@pytest.fixture
def breaker_rt(rt: Runtime) -> Iterator[Runtime]:
    rt.breaker = CircuitBreaker(rt.redis, rt.policy, probe_lease_s=30)
    rt.redis.delete(redis_keys.breaker("test"))
    yield rt
    rt.redis.delete(redis_keys.breaker("test"))


def tripped(rt: Runtime, at: float) -> float:
    """The breaker opened at `at` by other lines' failures; when its cool-down ends."""
    assert rt.breaker is not None
    for i in range(TRIP_FAILURES):
        until = rt.breaker.failed("test", at + i * 0.001)
    return until


BATCH_LINE = {"retry_until": "+3600", "deadline": "+3600", "batch_id": "batch_x"}


def test_an_open_breaker_holds_a_batch_line_without_calling(breaker_rt: Runtime) -> None:
    until = tripped(breaker_rt, time.time())
    job_id = make_job(breaker_rt, Case(None, "", 0, record=BATCH_LINE))
    try:
        outcome, asked = run_one(breaker_rt, job_id, None)
        job = job_json(breaker_rt.store.fields(job_id))
    finally:
        forget(breaker_rt, job_id)
    assert asked == []
    assert job["status"] == "retrying" and job["attempts"][-1]["outcome"] == "circuit_open"
    assert outcome.retry_in_s is not None and until - time.time() <= outcome.retry_in_s <= until - time.time() + 1.0


def test_a_plain_job_is_not_held_by_the_batch_lines_breaker(breaker_rt: Runtime) -> None:
    tripped(breaker_rt, time.time())
    job_id = make_job(breaker_rt, Case(None, "", 0))
    try:
        _, asked = run_one(breaker_rt, job_id, answer(200, COMPLETION))
        status = breaker_rt.store.fields(job_id)["status"]
    finally:
        forget(breaker_rt, job_id)
    assert len(asked) == 1 and status == "succeeded"


def test_half_open_one_line_probes_and_its_success_closes_the_breaker(breaker_rt: Runtime) -> None:
    tripped(breaker_rt, time.time() - 60)  # its cool-down (2 s) long over: half-open
    probe, other = (make_job(breaker_rt, Case(None, "", 0, record=BATCH_LINE)) for _ in range(2))
    try:
        assert breaker_rt.breaker is not None
        # While the probe's call is under way, another line comes up: it waits.
        def probing(call: Call) -> httpx2.Response:
            held, asked_meanwhile = run_one(breaker_rt, other, None)
            assert asked_meanwhile == [] and held.retry_in_s is not None
            assert breaker_rt.store.fields(other)["status"] == "retrying"
            return httpx2.Response(200, json=COMPLETION)

        _, asked = run_one(breaker_rt, probe, probing)
        assert len(asked) == 1 and breaker_rt.store.fields(probe)["status"] == "succeeded"
        assert not breaker_rt.redis.exists(redis_keys.breaker("test"))  # closed, trips forgotten
    finally:
        forget(breaker_rt, probe)
        forget(breaker_rt, other)


def test_half_open_the_probes_failure_opens_the_breaker_again_for_longer(breaker_rt: Runtime) -> None:
    until = tripped(breaker_rt, time.time() - 60)
    assert until < time.time()
    job_id = make_job(breaker_rt, Case(None, "", 0, record=BATCH_LINE))
    try:
        outcome, asked = run_one(breaker_rt, job_id, answer(503))
        status = breaker_rt.store.fields(job_id)["status"]
    finally:
        forget(breaker_rt, job_id)
    assert len(asked) == 1 and status == "retrying"
    assert breaker_rt.breaker is not None and breaker_rt.breaker.open_for_s("test") > BASE_DELAY_S  # 2 x 2 s
    assert outcome.retry_in_s is not None and outcome.retry_in_s >= breaker_rt.breaker.open_for_s("test")
