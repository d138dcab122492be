"""One attempt at a job: claim it, call the proxy, record what happened.

Plain functions over a `Runtime` (the process's Redis, store, HTTP client and key
vault), so the Celery task stays thin and the logic can be tested on its own.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

import redis

from llmq.worker import redis_keys
from llmq.worker.jobs.record import ERROR_BODY_MAX_CHARS, job_error
from llmq.worker.jobs.store import Claim, JobStore
from llmq.worker.observability import metrics
from llmq.worker.proxy.circuit_breaker import CircuitBreaker, proxy_down
from llmq.worker.proxy.client import UpstreamClient, client_for
from llmq.worker.proxy.errors import UpstreamError
from llmq.worker.proxy.flow_control import MAX_WAIT_S, FlowControl, Wait
from llmq.worker.proxy.in_flight import CallCancelled, InFlightCalls
from llmq.worker.proxy.key_verdicts import KeyVerdicts
from llmq.worker.proxy.retry_policy import RetryPolicy, is_retryable, next_delay
from llmq.worker.proxy.streaming import Delta
from llmq.worker.runtime.event_loop import wait
from llmq.worker.runtime.loop_redis import loop_client
from llmq.worker.secrets.key_vault import InvalidToken, KeyVault, vault_for
from llmq.worker.settings import Settings, get_settings

log = logging.getLogger("llmq.worker")
# Seconds beyond the HTTP timeouts before another delivery may take a running job over.
LEASE_MARGIN_S = 5.0


@dataclass
class Runtime:
    settings: Settings
    redis: redis.Redis
    store: JobStore
    upstream: UpstreamClient
    vault: KeyVault
    policy: RetryPolicy
    flow: FlowControl | None = None  # None when no flow-control setting is on: no Redis cost at all
    calls: InFlightCalls | None = None  # None: calls can be neither aborted nor have their leases renewed
    verdicts: KeyVerdicts | None = None  # the proxy's 2xx and 401/403 per key, for the API's quotas
    breaker: CircuitBreaker | None = None  # shared by batch lines; read about once a second while closed

    @property
    def lease_s(self) -> float:
        return call_lease_s(self.settings)


def call_lease_s(settings: Settings) -> float:
    """How long a call may hold its job (and its concurrency slots) before it counts as lost."""
    return settings.connect_timeout_s + settings.read_timeout_s + LEASE_MARGIN_S


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        encoding_errors="replace",  # a damaged record (bytes that are not UTF-8) still reads
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
        retry_on_timeout=True,
        max_connections=settings.worker_concurrency + 10,
    )


def flow_control_for(settings: Settings, client: redis.Redis) -> FlowControl | None:
    """The shared limits, or None when none is configured."""
    if not settings.flow_limits.enabled:
        return None
    # A held job's message waits in its worker until the countdown: far below the visibility timeout.
    max_wait_s = min(MAX_WAIT_S, settings.visibility_timeout_s / 10)
    return FlowControl(client, settings.flow_limits, call_lease_s(settings), max_wait_s)


@functools.lru_cache(maxsize=1)
def runtime() -> Runtime:
    settings = get_settings()
    client = redis_client(settings)
    policy = RetryPolicy(settings.retry_base_delay_s, settings.retry_max_delay_s, settings.retry_after_cap_s)
    return Runtime(
        settings=settings,
        redis=client,
        store=JobStore(client, settings.result_ttl_s, loop_client(settings)),
        upstream=client_for(settings),
        vault=vault_for(settings.server_secret, settings.previous_secrets),
        policy=policy,
        flow=flow_control_for(settings, client),
        calls=InFlightCalls(settings.redis_url, call_lease_s(settings)),
        verdicts=KeyVerdicts(client, vault_for(settings.server_secret), settings.rejected_key_block_s),
        breaker=CircuitBreaker(client, policy, probe_lease_s=call_lease_s(settings)),
    )


@dataclass(frozen=True)
class Outcome:
    """What the task should do next."""

    retry_in_s: float | None = None  # ask Celery for another attempt after this delay
    error: dict[str, Any] | None = None  # the job failed for good with this error
    expired: dict[str, Any] | None = None  # the job ended `expired` (its deadline came first), with this error
    skipped: str | None = None  # nothing to do (finished, cancelled, or gone)
    notify: bool = False  # the job is finished and has a callback to deliver
    held_by: str | None = None  # a flow-control limit held the job back: no attempt was spent


def attempt_record(
    claim: Claim, started: float, error: UpstreamError | None, retry_in_s: float | None, status_code: int | None
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "n": claim.attempt,
        "started_at": started,
        "duration_ms": round((time.time() - started) * 1000, 1),
        "outcome": "ok" if error is None else (f"http_{error.status_code}" if error.status_code else error.kind),
        "status_code": status_code,
    }
    if error is not None:
        record["error_type"] = error.kind
        record["message"] = error.message
    if retry_in_s is not None:
        record["retry_in_s"] = round(retry_in_s, 3)
    return record


def publish_deltas(rt: Runtime, job_id: str, claim: Claim, deltas: list[Delta]) -> None:
    rt.store.append_deltas(job_id, claim.attempt, deltas)
    metrics.STREAM_DELTAS.labels(rt.settings.metric_labels.model(claim.model)).inc(len(deltas))


def count_tokens(labels: metrics.LabelValues, claim: Claim, result: dict[str, Any]) -> None:
    usage = result.get("usage")
    if not isinstance(usage, dict):
        return
    model, app_id = labels.model(claim.model), labels.app_id(claim.app_id)
    for kind in ("prompt_tokens", "completion_tokens"):
        value = usage.get(kind)
        if isinstance(value, int) and value > 0:
            metrics.TOKENS.labels(model, app_id, kind.removesuffix("_tokens")).inc(value)


def _setup_error(rt: Runtime, job_id: str, claim: Claim, error_type: str, message: str) -> Outcome:
    error = job_error(error_type, message)
    attempt = {"n": claim.attempt, "started_at": claim.started_at, "duration_ms": 0, "outcome": error_type,
               "status_code": None, "error_type": error_type, "message": message}
    finished = rt.store.finish(job_id, "failed", attempt, error=error)
    if finished:
        metrics.JOBS_FINISHED.labels("failed").inc()
    return Outcome(error=error, notify=finished and bool(claim.callback_status))


def run_attempt(rt: Runtime, job_id: str) -> Outcome:
    if rt.flow is None:
        return _claim_and_call(rt, job_id)
    # Before the claim, so a job held back keeps its status and attempt count.
    gate = rt.flow.admit(job_id)
    if isinstance(gate, Wait):
        metrics.FLOW_CONTROL_WAITS.labels(gate.limit, gate.scope).inc()
        countdown = gate.countdown_s(rt.flow.max_wait_s)
        log.debug("held by the %s %s limit for %.2fs", gate.scope, gate.limit, countdown, extra={"job_id": job_id})
        return Outcome(retry_in_s=countdown, held_by=gate.limit)
    try:
        return _claim_and_call(rt, job_id)
    finally:
        rt.flow.release(gate)


def _cool_down(rt: Runtime, claim: Claim, err: UpstreamError) -> None:
    """After a 429, pause the model and the app for as long as the proxy asked (capped)."""
    if rt.flow is None or err.status_code != 429:
        return
    seconds = err.retry_after_s if err.retry_after_s is not None else rt.policy.base_delay_s
    try:
        rt.flow.cool_down(claim.model, claim.app_id, min(seconds, rt.policy.retry_after_cap_s))
    except redis.RedisError as err_:
        log.warning("cooldown not recorded: %s", err_, extra={"model": claim.model})


def _expired(rt: Runtime, job_id: str, claim: Claim, error: dict[str, Any], ended: bool) -> Outcome:
    if ended:
        metrics.JOBS_FINISHED.labels("expired").inc()
    log.info("job expired: its deadline came before its next attempt", extra={"job_id": job_id})
    return Outcome(expired=error, notify=ended and bool(claim.callback_status))


def _cancelled_attempt(rt: Runtime, job_id: str, claim: Claim, message: str) -> Outcome:
    """The job was cancelled while this attempt ran: the attempt joins its record, saying so."""
    record = {"n": claim.attempt, "started_at": claim.started_at,
              "duration_ms": round((time.time() - claim.started_at) * 1000, 1), "outcome": "cancelled",
              "status_code": None, "error_type": "cancelled", "message": message}
    extra = {"job_id": job_id, "attempt": claim.attempt, "model": claim.model, "duration_ms": record["duration_ms"]}
    if not rt.store.record_cancelled_attempt(job_id, record):
        # Not cancelled: ended otherwise meanwhile (another delivery's attempt after a lapsed lease, the sweeper).
        log.info("attempt over after the job had ended; its answer was dropped", extra=extra)
        return Outcome(skipped="finished")
    log.info(message, extra={**extra, "outcome": "cancelled"})
    return Outcome(skipped="cancelled")


def _retry_until(rt: Runtime, job_id: str) -> float | None:
    """A batch line's `retry_until`, the end of its batch's window (None for any other job)."""
    until = rt.redis.hget(redis_keys.job(job_id), "retry_until")
    return float(until) if until else None


def _batch_line_delay(rt: Runtime, err: UpstreamError, claim: Claim, until: float) -> float | None:
    """A batch line retries a retryable failure past `max_attempts`, with the capped backoff, while the next
    attempt would start inside its window; when the proxy is down for everyone it waits for the shared
    circuit breaker instead (`proxy.circuit_breaker`). A line with its window as `deadline` gets its delay
    whatever it is: one that would start past the deadline ends the job `expired`, reported `batch_expired`."""
    delay = next_delay(err, claim.attempt, claim.attempt + 1, rt.policy)
    if delay is None:
        return None
    if rt.breaker is not None and proxy_down(err):
        try:
            delay = rt.breaker.delay_s(claim.environment, delay)
        except redis.RedisError as err_:
            log.warning("circuit breaker not updated: %s", err_)
    return delay if claim.deadline is not None or time.time() + delay < until else None


def _held_by_breaker(rt: Runtime, breaker: CircuitBreaker, job_id: str, claim: Claim) -> Outcome | bool:
    """A batch line does not call while the shared breaker is open, nor while another line probes it: its claim
    becomes an attempt not made, and it comes back later. False: call; True: call as the breaker's probe."""
    try:
        if breaker.closed(claim.environment) or _retry_until(rt, job_id) is None:
            return False  # closed lately, or not a batch line: the breaker is theirs alone
        admission = breaker.admit(claim.environment)
    except redis.RedisError as err:
        log.warning("circuit breaker not read: %s", err, extra={"job_id": job_id})
        return False  # the call's own failure handling holds without it
    if admission.wait_s <= 0:
        return admission.probe
    now = time.time()
    record = {"n": claim.attempt, "started_at": claim.started_at, "duration_ms": 0.0, "outcome": "circuit_open",
              "status_code": None, "error_type": "circuit_open", "retry_in_s": round(admission.wait_s, 3),
              "message": "not called: the proxy is down for every worker (the shared circuit breaker is open)"}
    if claim.deadline is not None and now + admission.wait_s > claim.deadline:
        error = job_error("circuit_open", "the proxy was down for every worker until the deadline")
        ended = rt.store.expire(job_id, error, record, allowed_from=("running",))
        return _expired(rt, job_id, claim, error, ended)
    if rt.store.retry_later(job_id, record, admission.wait_s):
        return Outcome(retry_in_s=admission.wait_s)
    return Outcome(skipped="cancelled")  # cancelled in between


def _claim_and_call(rt: Runtime, job_id: str) -> Outcome:
    claim = rt.store.claim(job_id, rt.lease_s)
    if claim.state == "leased":
        # Another delivery holds this job; look again when its lease runs out.
        return Outcome(retry_in_s=max(float(claim.detail) - time.time(), 1.0))
    if claim.state == "expired":
        return _expired(rt, job_id, claim, job_error("deadline_exceeded", "the deadline passed before a call"),
                        ended=True)
    if claim.state != "claimed":
        log.info("job not run: %s %s", claim.state, claim.detail, extra={"job_id": job_id})
        # A finished job whose callback was never handed on (its worker died in between) gets it now.
        return Outcome(skipped=claim.state, notify=claim.callback_status == "pending")

    if claim.attempt > claim.max_attempts and (_retry_until(rt, job_id) or 0) < time.time():
        # The last attempt's worker vanished mid-call: no attempts are left to spend.
        return _setup_error(rt, job_id, claim, "worker_lost",
                            "the worker running the last attempt stopped before it finished; no attempts left")
    probe = False
    if rt.breaker is not None:
        held = _held_by_breaker(rt, rt.breaker, job_id, claim)
        if isinstance(held, Outcome):
            return held
        probe = held
    base_url = rt.settings.upstream_url(claim.environment)  # type: ignore[arg-type]
    if base_url is None:
        return _setup_error(rt, job_id, claim, "configuration",
                            f"no proxy URL is configured for environment {claim.environment!r}")
    try:
        key = rt.vault.decrypt(claim.key_token)
    except InvalidToken:
        return _setup_error(rt, job_id, claim, "key_unreadable",
                            "the stored key cannot be decrypted: LLMQ_SECRET changed since submission")

    started = claim.started_at
    body = claim.request.encode()
    extra = {"job_id": job_id, "attempt": claim.attempt, "model": claim.model}
    model_label = rt.settings.metric_labels.model(claim.model)
    try:
        with metrics.INFLIGHT_CALLS.track_inprogress():
            if claim.relay and claim.stream:
                call = rt.upstream.stream(
                    base_url, key, body, on_chunk=lambda chunks: rt.store.append_chunks(job_id, claim.attempt, chunks),
                )
            elif claim.stream:
                call = rt.upstream.stream(
                    base_url, key, body,
                    on_delta=lambda deltas: publish_deltas(rt, job_id, claim, deltas),
                )
            else:
                call = rt.upstream.complete(base_url, key, body)
            # Run as a task of its own, which a cancel of the job aborts (`llmq.worker.proxy.in_flight`).
            completion = wait(rt.calls.run(job_id, claim.attempt, call) if rt.calls is not None else call)
    except CallCancelled:
        return _cancelled_attempt(rt, job_id, claim, "the job was cancelled during this call; the call was aborted")
    except UpstreamError as err:
        _cool_down(rt, claim, err)
        if err.status_code in (401, 403) and rt.verdicts is not None:
            rt.verdicts.rejected(key)
        if probe and not proxy_down(err):
            rt.breaker.recovered(claim.environment)  # type: ignore[union-attr]  # the proxy is up: it answered
        delay = next_delay(err, claim.attempt, claim.max_attempts, rt.policy)
        metrics.UPSTREAM_LATENCY.labels(model_label, str(err.status_code or err.kind)).observe(time.time() - started)
        if is_retryable(err):
            until = _retry_until(rt, job_id)  # one read, on a failed attempt only
            if until is not None:
                delay = _batch_line_delay(rt, err, claim, until)
        if delay is not None and claim.deadline is not None and time.time() + delay > claim.deadline:
            # The next attempt would start after the deadline: it does not start, and the job ends here.
            record = attempt_record(claim, started, err, None, err.status_code)
            log.warning("attempt failed: %s", err.message,
                        extra={**extra, "status_code": err.status_code, "outcome": record["outcome"],
                               "duration_ms": record["duration_ms"]})
            ended = rt.store.expire(job_id, err.to_dict(), record, allowed_from=("running",))
            return _expired(rt, job_id, claim, err.to_dict(), ended)
        record = attempt_record(claim, started, err, delay, err.status_code)
        log.warning("attempt failed: %s", err.message,
                    extra={**extra, "status_code": err.status_code, "outcome": record["outcome"],
                           "duration_ms": record["duration_ms"]})
        if delay is not None and rt.store.retry_later(job_id, record, delay):
            metrics.RETRIES.labels(record["outcome"]).inc()
            return Outcome(retry_in_s=delay)
        error = err.to_dict()
        error_body = err.body_text(ERROR_BODY_MAX_CHARS) if claim.relay else None
        if not rt.store.finish(job_id, "failed", record, error=error, error_body=error_body):
            return _cancelled_attempt(rt, job_id, claim, f"the call failed after the job was cancelled: {err.message}")
        metrics.JOBS_FINISHED.labels("failed").inc()
        return Outcome(error=error, notify=bool(claim.callback_status))

    if rt.verdicts is not None:
        rt.verdicts.accepted(claim.app_id)
    if (claim.attempt > 1 or probe) and rt.breaker is not None:
        rt.breaker.recovered(claim.environment)  # a success after failures: the proxy is back
    record = attempt_record(claim, started, None, None, 200)
    metrics.UPSTREAM_LATENCY.labels(model_label, "200").observe(time.time() - started)
    finished = rt.store.finish(job_id, "succeeded", record, result_json=completion.text)
    if not finished:
        return _cancelled_attempt(rt, job_id, claim, "the call finished after the job was cancelled; its answer "
                                                     "was dropped")
    metrics.JOBS_FINISHED.labels("succeeded").inc()
    count_tokens(rt.settings.metric_labels, claim, completion.data)
    log.info("attempt succeeded", extra={**extra, "status_code": 200, "outcome": "ok",
                                         "duration_ms": record["duration_ms"]})
    return Outcome(notify=bool(claim.callback_status))
