"""`POST {base}/chat/completions`: OpenAI's chat completions, through llmq's queue.

The call becomes a job like any other (recorded, queued, retried, visible at `GET /v1/jobs/{id}`), and the
call waits for it: the answer is the proxy's own, or an error in OpenAI's shape (`api.openai.answers`). With
`"stream": true` the proxy's chunks are relayed as they come (`api.openai.relay`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.responses import StreamingResponse

from llmq.api.deps import CallerDep, SettingsDep, StoreDep, VaultDep
from llmq.api.job_store import AsyncJobStore
from llmq.api.openai.answers import finished_answer, job_headers, still_running
from llmq.api.openai.errors import OpenAIErrorResponse
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
from llmq.worker.settings import Environment

log = logging.getLogger("llmq.api")
router = APIRouter(tags=["openai"], route_class=OpenAIRoute)

# An answer nobody reads (the caller left): nginx's "client closed request".
CLIENT_CLOSED = 499
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 409, 413, 429, 502, 503, 504)
}


@dataclass(frozen=True)
class LlmqOptions:
    """llmq's own options for one call, from `llmq-*` headers (the body belongs to the proxy)."""

    priority: Literal["high", "normal", "low"]
    max_attempts: int | None
    callback_url: str | None
    callback_secret: str | None


async def llmq_options(
    llmq_priority: Annotated[
        Literal["high", "normal", "low"], Header(description="Queue of the call's job (default high).")
    ] = "high",
    llmq_max_attempts: Annotated[
        int | None, Header(ge=1, description="Attempts at most, first included (default from config).")
    ] = None,
    llmq_callback_url: Annotated[
        str | None, Header(max_length=2048, description="Also POST the finished job here, signed, as for /v1/jobs.")
    ] = None,
    llmq_callback_secret: Annotated[
        str | None, Header(max_length=256, description="The callback's signing secret, 'whsec_<base64>'.")
    ] = None,
) -> LlmqOptions:
    return LlmqOptions(llmq_priority, llmq_max_attempts, llmq_callback_url, llmq_callback_secret)


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
        settings: SettingsDep,
        store: StoreDep,
        vault: VaultDep,
        options: Annotated[LlmqOptions, Depends(llmq_options)],
        prefer: Annotated[
            list[str] | None,
            Header(description="RFC 7240: `respond-async` answers 202 with the job at once; `wait=N` waits at "
                               "most N seconds for the answer."),
        ] = None,
        x_stainless_read_timeout: Annotated[
            str | None, Header(description="The OpenAI SDK's read timeout (seconds): the call waits a little less.")
        ] = None,
    ) -> Response:
        """OpenAI's chat completions through llmq: the proxy's answer, with llmq's retries, or a typed error."""
        preferences = parse_prefer(prefer)
        wait_s = wait_bound_s(preferences, read_timeout_s(x_stainless_read_timeout), settings)
        # A detached job has nobody waiting on it, so no deadline of the call's.
        deadline = None if preferences.respond_async else datetime.now(UTC) + timedelta(seconds=wait_s)
        job_body = JobCreate(
            request=body, priority=options.priority, max_attempts=options.max_attempts, environment=environment,
            callback_url=options.callback_url, callback_secret=options.callback_secret, deadline=deadline,
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
            fields = await unless_disconnected(request, wait_finished(store, job.id, wait_s))
        except Disconnected:
            await cancel_unfinished(store, job.id, job.callback is not None)
            return Response(status_code=CLIENT_CLOSED)
        if fields is None:
            return still_running(job.id, wait_s).response()
        return finished_answer(fields)

    return create_chat_completion


async def _streamed(request: Request, store: AsyncJobStore, job: NewJob, wait_s: float) -> Response:
    """Headers go out with the first chunk: until then a failure can still be answered with its status."""
    opening = await unless_disconnected(request, wait_for_opening(store, job.id, wait_s))
    if opening.finished is not None:
        return finished_answer(opening.finished)
    if not opening.frames:
        return still_running(job.id, wait_s).response()
    return StreamingResponse(
        relay(store, job.id, opening, wait_s, on_unfinished=lambda: cancel_later(store, job)),
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
