"""`{base}/batches`: OpenAI's Batch API over llmq's queue; every line runs as a job (docs/batch.md).

The API records the batch and publishes its first step; the worker validates, feeds the lines as jobs,
collects their results and writes the output files (`llmq.worker.batches.runner`). A batch belongs to the
key that created it; any other key gets 404. The base path chooses the lines' environment, as for chat.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import aclosing
from typing import Annotated, Any, Literal, cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from llmq.api.deps import Caller, CallerDep, SettingsDep, StoreDep, VaultDep
from llmq.api.job_store import Refusal
from llmq.api.openai.errors import OpenAIError, OpenAIErrorResponse
from llmq.api.openai.files import owned_file
from llmq.api.openai.owner_index import list_page, live_records
from llmq.api.openai.route import BASE_PATHS, OpenAIRoute
from llmq.api.submission import QUOTA_RETRY_AFTER_S, check_callback_fields
from llmq.api.uploads import MAX_EXPIRY_S, MIN_EXPIRY_S
from llmq.worker import redis_keys
from llmq.worker.batches import scripts
from llmq.worker.batches.input_lines import CHAT_ENDPOINT
from llmq.worker.batches.record import BATCH_ID_PREFIX, batch_object, new_batch_id
from llmq.worker.files.records import UPLOAD_PURPOSE
from llmq.worker.settings import Environment, Settings
from llmq.worker.tasks import enqueue_batch_step

log = logging.getLogger("llmq.api")
router = APIRouter(tags=["batches"], route_class=OpenAIRoute)
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": OpenAIErrorResponse}
                                           for code in (400, 401, 404, 409, 429, 503)}
MAX_LIST_LIMIT = 100
DEFAULT_OUTPUT_EXPIRY_S = 30 * 24 * 3600
# OpenAI's metadata limits.
MAX_METADATA_PAIRS, MAX_METADATA_KEY_CHARS, MAX_METADATA_VALUE_CHARS = 16, 64, 512


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=MIN_EXPIRY_S, le=MAX_EXPIRY_S)


class BatchCreate(BaseModel):
    """OpenAI's batch creation body."""

    model_config = ConfigDict(extra="ignore")

    input_file_id: str = Field(max_length=128)
    endpoint: Literal["/v1/chat/completions"] = Field(description="Only chat completions run through llmq.")
    completion_window: Literal["24h"]
    metadata: dict[str, str] | None = None
    output_expires_after: ExpiresAfter | None = None
    # llmq's extension (the SDK sends them with `extra_body`): a webhook on the batch's terminal status.
    callback_url: str | None = Field(None, max_length=2048)
    callback_secret: str | None = Field(None, max_length=256)

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return value
        if len(value) > MAX_METADATA_PAIRS:
            raise ValueError(f"at most {MAX_METADATA_PAIRS} pairs")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"keys are at most {MAX_METADATA_KEY_CHARS} characters ({key[:80]!r})")
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"values are at most {MAX_METADATA_VALUE_CHARS} characters (key {key[:80]!r})")
        return value


def redis_of(request: Request) -> aioredis.Redis:
    return cast(aioredis.Redis, request.app.state.redis)


def not_found(batch_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such Batch object: {batch_id:.80}", code="batch_not_found", param="batch_id")


async def owned_batch(client: aioredis.Redis, batch_id: str, caller: Caller) -> dict[str, str]:
    if not batch_id.startswith(BATCH_ID_PREFIX) or len(batch_id) > 64:
        raise not_found(batch_id)
    fields = cast(dict[str, str], await client.hgetall(redis_keys.batch(batch_id)))
    if not fields or fields.get("owner") != caller.owner:
        raise not_found(batch_id)
    return fields


async def publish_step(batch_id: str) -> None:
    """Publish the batch's next step. The batch is recorded already: if the broker cannot take the message,
    the sweeper resumes the batch (it is in the index of active batches), so the caller is not failed."""
    try:
        await run_in_threadpool(enqueue_batch_step, batch_id)
    except Exception as err:
        log.warning("batch step not published (%s); the sweeper will resume the batch", type(err).__name__,
                    extra={"batch_id": batch_id})


def _model_of(file_fields: dict[str, str]) -> str | None:
    """The batch's model when its file names one; several models (an llmq extension) leave it unset."""
    models = json.loads(file_fields.get("models") or "{}")
    return next(iter(models)) if len(models) == 1 else None


def quota_error(refusal: Refusal, app_id: str, settings: Settings) -> OpenAIError:
    """A batch refused because its app id has no room for another unfinished job (its lines count in the quota)."""
    if refusal.reason == "app_quota":
        limit = (f"its limit of {settings.app_max_unfinished} unfinished jobs (LLMQ_APP_MAX_UNFINISHED), batch lines "
                 "included")
    else:
        limit = (f"the limit of {settings.unknown_apps_max_unfinished} unfinished jobs that app ids whose key the "
                 "proxy has not accepted yet share (LLMQ_UNKNOWN_APPS_MAX_UNFINISHED), batch lines included")
    return OpenAIError(429, f"App id {app_id[:100]!r} is at {limit}; the batch was not created. Try again as its "
                            "jobs finish, or cancel some.", code="quota_exceeded",
                       headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)})


def endpoint_for(environment: Environment | None):  # type: ignore[no-untyped-def]
    async def create_batch(
        request: Request, body: BatchCreate, caller: CallerDep, settings: SettingsDep, vault: VaultDep,
        store: StoreDep,
    ) -> dict[str, Any]:
        """Create a batch from an uploaded file of chat completion requests; it runs on the workers."""
        client = redis_of(request)
        try:
            file_fields = await owned_file(client, body.input_file_id, caller)
        except OpenAIError:
            raise OpenAIError(404, f"No such File object: {body.input_file_id:.80}", code="file_not_found",
                              param="input_file_id") from None
        if file_fields.get("purpose") != UPLOAD_PURPOSE:
            raise OpenAIError(400, f"The file's purpose is {file_fields.get('purpose')!r}; a batch's input file must "
                                   "be uploaded with purpose=batch.", code="invalid_input_file", param="input_file_id")
        await check_callback_fields(body.callback_url, body.callback_secret, settings)
        full = await store.quota_full(caller.app_id)
        if full is not None:
            raise quota_error(full, caller.app_id, settings)
        env = environment or settings.upstream_default_env
        if settings.upstream_url(env) is None:
            raise OpenAIError(400, f"No proxy URL is configured for the {env!r} environment "
                                   f"(LLMQ_UPSTREAM_{env.upper()}_URL).", code="invalid_request")
        now = time.time()
        batch_id = new_batch_id()
        output_expires_s = body.output_expires_after.seconds if body.output_expires_after else DEFAULT_OUTPUT_EXPIRY_S
        window_s = settings.batch_completion_window_s  # the one window OpenAI offers, "24h"
        fields = {
            "id": batch_id, "owner": caller.owner, "key_token": vault.key_token(caller.key, caller.owner),
            "app_id": caller.app_id, "environment": env, "endpoint": CHAT_ENDPOINT,
            "input_file_id": body.input_file_id, "completion_window": body.completion_window,
            "created_at": str(int(now)), "expires_at": str(int(now + window_s)), "status": "validating",
            "total": file_fields.get("requests", "0"), "lines": file_fields.get("lines", "0"),
            "completed": "0", "failed": "0", "priority": "low", "max_attempts": str(settings.default_max_attempts),
            "output_expires_s": str(output_expires_s), "model": _model_of(file_fields) or "",
        }
        if body.metadata is not None:
            fields["metadata"] = json.dumps(body.metadata)
        if body.callback_url is not None:
            fields["callback"] = json.dumps({"url": body.callback_url})
            fields["callback_status"] = "pending"
            if body.callback_secret is not None:
                fields["callback_secret_token"] = vault.encrypt(body.callback_secret)
        if file_fields.get("problems"):
            fields["input_problems"] = file_fields["problems"]
        pipe = client.pipeline(transaction=True)
        pipe.hset(redis_keys.batch(batch_id), mapping=cast(Any, fields))
        pipe.expire(redis_keys.batch(batch_id), int(window_s + output_expires_s))
        pipe.zadd(redis_keys.batches_of(caller.owner), {batch_id: now})
        pipe.zadd(redis_keys.ACTIVE_BATCHES, {batch_id: now})  # a lost first step is resumed by the sweeper
        await pipe.execute()
        await publish_step(batch_id)
        return batch_object(fields)

    return create_batch


async def retrieve_batch(request: Request, batch_id: str, caller: CallerDep) -> dict[str, Any]:
    """A batch: its status, request counts, timestamps, and its output and error files once written."""
    return batch_object(await owned_batch(redis_of(request), batch_id, caller))


async def list_batches(
    request: Request,
    caller: CallerDep,
    after: Annotated[str | None, Query(max_length=64, description="A batch id: list the batches after it.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = 20,
) -> dict[str, Any]:
    """The caller's batches, newest first; `has_more` and `after` page through them."""
    listed = live_records(redis_of(request), redis_keys.batches_of(caller.owner), redis_keys.batch, after,
                          desc=True, kind="batch")
    data: list[dict[str, Any]] = []
    async with aclosing(listed) as found:  # a page that ends early closes the scan
        async for fields in found:
            data.append(batch_object(fields))
            if len(data) > limit:
                break
    return list_page(data, limit)


async def cancel_batch(request: Request, batch_id: str, caller: CallerDep, store: StoreDep) -> dict[str, Any]:
    """Cancel a batch: no new line starts; lines under way are cancelled; finished lines are kept in its files."""
    client = redis_of(request)
    fields = await owned_batch(client, batch_id, caller)
    keys = scripts.stop_keys(batch_id)
    # The answer is the record as the cancel left it, read in the same transaction: a worker's step may take the
    # batch on to `finalizing` at any moment after it.
    pipe = client.pipeline(transaction=True)
    pipe.eval(scripts.STOP, len(keys), *keys, repr(time.time()), "cancelled", "cancelling", "cancelling_at")
    pipe.hgetall(redis_keys.batch(batch_id))
    before, after = await pipe.execute()
    if not before and fields["status"] not in ("cancelling", "cancelled"):
        raise OpenAIError(409, f"The batch is {fields['status']}; only a validating or in-progress batch can be "
                               "cancelled.", code="batch_not_cancellable")
    if before:
        # Lines whose call is under way: cancelled too, so their answers are dropped.
        for job_id in cast(list[str], await client.hkeys(redis_keys.batch_inflight(batch_id))):
            await store.cancel(job_id)
        await publish_step(batch_id)
    return batch_object(after or fields)


for base_path, environment in BASE_PATHS.items():
    name = base_path.replace("/", "_")
    router.add_api_route(f"{base_path}/batches", endpoint_for(environment), methods=["POST"],
                         name=f"create_batch{name}", responses=ERRORS)
    router.add_api_route(f"{base_path}/batches", list_batches, methods=["GET"], name=f"list_batches{name}",
                         responses=ERRORS)
    router.add_api_route(f"{base_path}/batches/{{batch_id}}", retrieve_batch, methods=["GET"],
                         name=f"retrieve_batch{name}", responses=ERRORS)
    router.add_api_route(f"{base_path}/batches/{{batch_id}}/cancel", cancel_batch, methods=["POST"],
                         name=f"cancel_batch{name}", responses=ERRORS)
