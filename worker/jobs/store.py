"""The worker's side of the job records: claim a job, record an attempt, finish it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import greenback
import redis
import redis.asyncio as aioredis
from redis.commands.core import Script

from llmq.worker import redis_keys
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import UNFINISHED, deadline_error, dumps, public_view, state_event
from llmq.worker.proxy.streaming import Delta
from llmq.worker.runtime.event_loop import wait
from llmq.worker.runtime.held_connection import HeldConnections


@dataclass(frozen=True)
class Claim:
    """What claiming a job found: `claimed` (with what the call needs), or why not."""

    state: str  # claimed | missing | finished | leased | expired (past its deadline: it ends here, uncalled)
    attempt: int = 0
    key_token: str = ""
    request: str = ""  # the chat body as stored: JSON text, sent to the proxy as it is
    stream: bool = False
    environment: str = ""
    max_attempts: int = 1
    model: str = ""
    callback_status: str = ""
    app_id: str = ""
    detail: str = ""
    started_at: float = 0.0  # the claim's time: the attempt's start, as the record and its events tell it
    deadline: float | None = None  # epoch seconds; no attempt starts after it
    relay: bool = False  # a caller waits for the proxy's own chunks and answer (see NewJob.relay)


# Claim arguments for a job that turns out not to be past its deadline (nearly all of them).
_NO_EXPIRY = ("", "", 0)


class JobStore:
    def __init__(self, client: redis.Redis, ttl_s: int, loop_client: aioredis.Redis | None = None) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self._held = HeldConnections(client)
        self._loop_client = loop_client
        self._claim = client.register_script(job_scripts.CLAIM)
        self._transition = client.register_script(job_scripts.TRANSITION)
        self._update_callback = client.register_script(job_scripts.UPDATE_CALLBACK)
        self._claim_delivery = client.register_script(job_scripts.CLAIM_DELIVERY)
        self._record_cancelled_attempt = client.register_script(job_scripts.RECORD_CANCELLED_ATTEMPT)

    def _run(self, script: Script, keys_: list[str], args: list[Any]) -> Any:
        """Every script call of the worker: `EVALSHA` awaited on the event loop by a task there
        (`runtime.loop_redis`), elsewhere on the thread's held connection (`runtime.held_connection`)."""
        try:
            if self._loop_client is not None and greenback.has_portal():
                return wait(self._loop_client.evalsha(script.sha, len(keys_), *keys_, *args))
            return self._held.execute("EVALSHA", script.sha, len(keys_), *keys_, *args)
        except redis.exceptions.NoScriptError:
            return script(keys=keys_, args=args)  # loads it into this Redis, then runs it

    def claim(self, job_id: str, lease_s: float, now: float | None = None) -> Claim:
        now = time.time() if now is None else now
        keys_ = [redis_keys.job(job_id), redis_keys.job_events(job_id), redis_keys.DEADLINES]
        # The expiry's event and error are made only when needed, by a second call (see `_expired_args`).
        reply = self._run(self._claim, keys_, [repr(now), repr(now + lease_s), job_id, *_NO_EXPIRY])
        if reply[0] == "expiring":
            reply = self._run(self._claim, keys_, [repr(now), repr(now + lease_s), job_id,
                                                   *self._expired_args(now, float(reply[1]))])
        state = reply[0]
        if state == "finished":
            return Claim(state=state, detail=reply[1], callback_status=reply[2])
        if state == "expired":
            return Claim(state=state, callback_status=reply[1])
        if state != "claimed":
            return Claim(state=state, detail=reply[1] if len(reply) > 1 else "")
        (_, attempt, key_token, request, environment, max_attempts, model, callback_status, app_id, stream, deadline,
         relay) = reply
        return Claim(
            state="claimed",
            attempt=int(attempt),
            key_token=key_token,
            request=request,
            stream=stream == "1",
            environment=environment,
            max_attempts=int(max_attempts),
            model=model,
            callback_status=callback_status,
            app_id=app_id,
            started_at=now,
            deadline=float(deadline) if deadline else None,
            relay=relay == "1",
        )

    def _expired_args(self, now: float, deadline: float) -> list[str | int]:
        error = deadline_error(deadline)
        return [state_event("expired", now, error=error), dumps(error), self.ttl_s]

    def transition(
        self,
        job_id: str,
        to_status: str,
        allowed_from: tuple[str, ...],
        event: str,
        *,
        attempt: dict[str, Any] | None = None,
        now: float | None = None,
        **fields: str,
    ) -> tuple[bool, str]:
        """Move a job forward if its status allows; (done, status it has now)."""
        now = time.time() if now is None else now
        call = job_scripts.transition_call(
            job_id, to_status, allowed_from, now, event, self.ttl_s, dumps(attempt) if attempt else "", fields
        )
        reply = self._run(self._transition, call.keys, call.args)
        return reply[0] == "ok", reply[1] if len(reply) > 1 else "missing"

    def retry_later(self, job_id: str, attempt: dict[str, Any], delay_s: float) -> bool:
        now = time.time()
        event = state_event("retrying", now, attempt=attempt["n"], retry_in_s=delay_s, reason=attempt["outcome"])
        done, _ = self.transition(
            job_id, "retrying", ("running",), event, attempt=attempt, now=now,
            next_attempt_at=repr(now + delay_s),
        )
        return done

    def finish(
        self,
        job_id: str,
        status: str,
        attempt: dict[str, Any] | None,
        *,
        result_json: str | None = None,
        error: dict[str, Any] | None = None,
        error_body: str | None = None,
        allowed_from: tuple[str, ...] = ("running",),
    ) -> bool:
        now = time.time()
        fields = {}
        if result_json is not None:
            fields["result"] = result_json
        if error is not None:
            fields["error"] = dumps(error)
        if error_body is not None:
            fields["error_body"] = error_body
        event = state_event(status, now, **({"error": error} if error else {}))
        done, _ = self.transition(job_id, status, allowed_from, event, attempt=attempt, now=now, **fields)
        return done

    def expire(self, job_id: str, error: dict[str, Any], attempt: dict[str, Any] | None = None,
               allowed_from: tuple[str, ...] = ("queued", "retrying")) -> bool:
        """End a job that may not start another attempt before its deadline."""
        return self.finish(job_id, "expired", attempt, error=error, allowed_from=allowed_from)

    def record_cancelled_attempt(self, job_id: str, attempt: dict[str, Any]) -> bool:
        """Keep the attempt of a call that was in flight when the job was cancelled; False if it is not so."""
        return bool(self._run(self._record_cancelled_attempt, [redis_keys.job(job_id)],
                              [str(attempt["n"]), dumps(attempt)]))

    def fail_unfinished(self, job_id: str, error: dict[str, Any]) -> bool:
        """Give up on a job from any unfinished state (the sweeper's last word)."""
        return self.finish(job_id, "failed", None, error=error, allowed_from=UNFINISHED)

    def append_deltas(self, job_id: str, attempt: int, deltas: list[Delta]) -> None:
        """Content deltas of a streaming call, for live listeners."""
        pipe = self.redis.pipeline(transaction=False)
        for delta in deltas:
            payload = {"type": "delta", "attempt": attempt, "index": delta.choice_index}
            if delta.content is not None:
                payload["content"] = delta.content
            if delta.reasoning_content is not None:
                payload["reasoning_content"] = delta.reasoning_content
            if delta.tool_call_fragments is not None:
                payload["tool_calls"] = delta.tool_call_fragments
            if delta.finish_reason is not None:
                payload["finish_reason"] = delta.finish_reason
            pipe.xadd(redis_keys.job_events(job_id), {"e": dumps(payload)}, maxlen=redis_keys.EVENTS_MAXLEN,
                      approximate=True)
        pipe.execute()

    def append_chunks(self, job_id: str, attempt: int, payloads: list[str]) -> None:
        """A relayed stream's chunks, each the proxy's `data:` payload as sent, for the caller waiting on them."""
        name = redis_keys.job_events(job_id)
        for data in payloads:  # usually one: a chunk is published as soon as its line is read
            event = dumps({"type": "chunk", "attempt": attempt, "data": data})
            self._held.execute("XADD", name, "MAXLEN", "~", redis_keys.EVENTS_MAXLEN, "*", "e", event)

    def claim_delivery(self, job_id: str, now: float, lease_s: float) -> tuple[str, str]:
        """('claimed', attempts made so far) | ('not_due', next_at) | ('none', callback status)."""
        state, detail = self._run(self._claim_delivery, [redis_keys.job(job_id)], [repr(now), repr(now + lease_s)])
        return state, detail

    def update_callback(
        self, job_id: str, allowed: tuple[str, ...], delivery: dict[str, Any] | None = None, **fields: str
    ) -> str | None:
        """Change the callback's bookkeeping if its status is one of `allowed`; the status it had, or None."""
        call = job_scripts.update_callback_call(job_id, allowed, dumps(delivery) if delivery else "", fields)
        reply = self._run(self._update_callback, call.keys, call.args)
        return reply or None

    def fields(self, job_id: str) -> dict[str, str]:
        """The raw record ({} once it has expired)."""
        return cast(dict[str, str], self.redis.hgetall(redis_keys.job(job_id)))

    def get(self, job_id: str) -> dict[str, Any] | None:
        fields = self.fields(job_id)
        return public_view(fields) if fields else None
