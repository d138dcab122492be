"""`POST {base}/chat/completions`: OpenAI's chat completions, through llmq's queue.

The call becomes a job like any other (recorded, queued, retried, visible at `GET /v1/jobs/{id}`), and the
call waits for it: the answer is the proxy's own, or an error in OpenAI's shape (`api.openai.answers`). With
`"stream": true` the proxy's chunks are relayed as they come (`api.openai.relay`).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import redis.exceptions
from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse

from llmq.api.deps import CallerDep
from llmq.api.job_store import AsyncJobStore
from llmq.api.openai.answers import finished_answer, job_headers, still_running
from llmq.api.openai.errors import OpenAIError, OpenAIErrorResponse
from llmq.api.openai.options import parse_prefer, read_timeout_s, wait_bound_s
from llmq.api.openai.relay import relay, wait_for_opening
from llmq.api.openai.route import BASE_PATHS, OpenAIRoute
from llmq.api.openai.waiting import Disconnected, unless_disconnected, wait_finished
from llmq.api.routes.jobs import cancel_unfinished
from llmq.api.schemas import ChatRequest, JobCreate, JobPublic
from llmq.api.submission import build_job, check_callback, check_limits, record_and_queue
from llmq.worker.jobs.record import NewJob
from llmq.worker.jobs.view import new_job_json_bytes
from llmq.worker.observability import metrics
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import Environment, Settings

log = logging.getLogger("llmq.api")
router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

# An answer nobody reads (the caller left): nginx's "client closed request".
CLIENT_CLOSED = 499
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 409, 413, 429, 502, 503, 504)
}


# llmq's own options for a call come in `llmq-*` headers: the body belongs to the proxy.
PriorityHeader = Annotated[
    Literal["high", "normal", "low"], Header(description="Queue of the call's job (default high).")
]
MaxAttemptsHeader = Annotated[
    int | None, Header(ge=1, description="Attempts at most, first included (default from config).")
]
CallbackUrlHeader = Annotated[
    str | None, Header(max_length=2048, description="Also POST the finished job here, signed, as for /v1/jobs.")
]
CallbackSecretHeader = Annotated[
    str | None, Header(max_length=256, description="The callback's signing secret, 'whsec_<base64>'.")
]
PreferHeader = Annotated[
    list[str] | None,
    Header(description="RFC 7240: `respond-async` answers 202 with the job at once; `wait=N` waits at most N "
                       "seconds for the answer."),
]
ReadTimeoutHeader = Annotated[
    str | None, Header(description="The OpenAI SDK's read timeout (seconds): the call waits a little less.")
]


# Cancels started when a stream ends early: held here so the loop does not lose them.
_cancelling: set[asyncio.Task[Any]] = set()


def cancel_later(store: AsyncJobStore, job: NewJob) -> None:
    """Cancel the job from outside the (cancelled) stream that found nobody reading it any more."""
    task = asyncio.get_running_loop().create_task(cancel_unfinished(store, job.id, job.callback is not None))
    _cancelling.add(task)
    task.add_done_callback(_cancelling.discard)


def endpoint_for(environment: Environment | None):  # type: ignore[no-untyped-def]
    async def create_chat_completion(
        request: Request,
        body: ChatRequest,
        caller: CallerDep,
        llmq_priority: PriorityHeader = "high",
        llmq_max_attempts: MaxAttemptsHeader = None,
        llmq_callback_url: CallbackUrlHeader = None,
        llmq_callback_secret: CallbackSecretHeader = None,
        prefer: PreferHeader = None,
        x_stainless_read_timeout: ReadTimeoutHeader = None,
    ) -> Response:
        """OpenAI's chat completions through llmq: the proxy's answer, with llmq's retries, or a typed error."""
        # Read straight from the app's state, as `deps.caller_of` does: each dependency costs FastAPI ~20 µs.
        settings: Settings = request.app.state.settings
        store: AsyncJobStore = request.app.state.store
        vault: KeyVault = request.app.state.vault
        preferences = parse_prefer(prefer)
        wait_s = wait_bound_s(preferences, read_timeout_s(x_stainless_read_timeout), settings)
        # A detached job has nobody waiting on it, so no deadline of the call's.
        deadline = None if preferences.respond_async else datetime.now(UTC) + timedelta(seconds=wait_s)
        job_body = JobCreate(
            request=body, priority=llmq_priority, max_attempts=llmq_max_attempts, environment=environment,
            callback_url=llmq_callback_url, callback_secret=llmq_callback_secret, deadline=deadline,
        )
        check_limits(job_body, settings)
        await check_callback(job_body, settings)
        job = build_job(job_body, caller, settings, vault, relay=True)
        await record_and_queue(store, [(job, None)], settings)
        metrics.JOBS_SUBMITTED.labels(job.priority, job.environment).inc()
        if preferences.respond_async:
            headers = {"Location": f"/v1/jobs/{job.id}", "Preference-Applied": "respond-async", "x-request-id": job.id}
            return Response(new_job_json_bytes(job), 202, headers=headers, media_type="application/json")
        try:
            if body.stream:
                return await _streamed(request, store, job, wait_s)
            waiting = wait_finished(store, request.app.state.stream_reader, job.id, wait_s)
            fields = await unless_disconnected(request, waiting)
        except Disconnected:
            await cancel_unfinished(store, job.id, job.callback is not None)
            return Response(status_code=CLIENT_CLOSED)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as err:
            # The job exists and may still run: the SDK must not send the call again and make a second one.
            log.warning("lost sight of a job while waiting: %s", type(err).__name__, extra={"job_id": job.id})
            return OpenAIError(
                503, f"Job storage (Redis) became unreachable while waiting for job {job.id}; it may still finish: "
                     f"read it with GET /v1/jobs/{job.id}.", code="unavailable", headers=job_headers(job.id),
            ).response()
        if fields is None:
            return still_running(job.id, wait_s).response()
        return finished_answer(fields)

    return create_chat_completion


async def _streamed(request: Request, store: AsyncJobStore, job: NewJob, wait_s: float) -> Response:
    """Headers go out with the first chunk: until then a failure can still be answered with its status."""
    reader = request.app.state.stream_reader
    opening = await unless_disconnected(request, wait_for_opening(store, reader, job.id, wait_s))
    if opening.finished is not None:
        return finished_answer(opening.finished)
    if not opening.frames:
        return still_running(job.id, wait_s).response()
    return StreamingResponse(
        relay(store, reader, job.id, opening, wait_s, on_unfinished=lambda: cancel_later(store, job)),
        media_type="text/event-stream",
        headers={**job_headers(job.id), "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


for base_path, environment in BASE_PATHS.items():
    router.add_api_route(
        f"{base_path}/chat/completions", endpoint_for(environment), methods=["POST"],
        name=f"chat_completions{base_path.replace('/', '_')}",
        summary=f"Chat completions ({environment or 'default'} environment)",
        responses={
            200: {"description": "The proxy's ChatCompletion as received, or with `\"stream\": true` its chunks "
                                 "as server-sent events ending with `data: [DONE]`.",
                  "content": {"application/json": {}, "text/event-stream": {"schema": {"type": "string"}}}},
            202: {"model": JobPublic, "description": "`Prefer: respond-async`: the job, at once."},
            **ERRORS,
        },
    )
