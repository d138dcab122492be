"""`{base}/files`: OpenAI's Files API for batch input and output, the bytes in the file store.

A file belongs to the key that uploaded it (its fingerprint, as jobs do); any other key gets 404 on every
route. The record (`llmq.worker.files.records`) lives in Redis and expires with the file.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Annotated, Any, Literal, cast

import redis.asyncio as aioredis
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from llmq.api.deps import Caller, CallerDep, SettingsDep
from llmq.api.openai.errors import OpenAIError, OpenAIErrorResponse
from llmq.api.openai.owner_index import list_page, live_records
from llmq.api.openai.route import BASE_PATHS, OpenAIRoute
from llmq.api.uploads import UploadError, UploadRules, receive_upload
from llmq.worker import redis_keys
from llmq.worker.files import records
from llmq.worker.files.names import FILE_ID_PREFIX, NAME_RE, new_file_id
from llmq.worker.files.store import FileStore

router = APIRouter(tags=["files"], route_class=OpenAIRoute)
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 413, 415, 503)
}
MAX_LIST_LIMIT = 10_000  # OpenAI's own bound for GET /v1/files


def file_store(request: Request) -> FileStore:
    return cast(FileStore, request.app.state.files)


def redis_of(request: Request) -> aioredis.Redis:
    return cast(aioredis.Redis, request.app.state.redis)


def not_found(file_id: str) -> OpenAIError:
    return OpenAIError(404, f"No such File object: {file_id:.80}", code="file_not_found", param="file_id")


async def owned_file(client: aioredis.Redis, file_id: str, caller: Caller) -> dict[str, str]:
    """The file's record if it exists and belongs to the caller; 404 otherwise, either way."""
    if not file_id.startswith(FILE_ID_PREFIX) or not NAME_RE.match(file_id):
        raise not_found(file_id)
    fields = cast(dict[str, str], await client.hgetall(redis_keys.file(file_id)))
    if not fields or fields.get("owner") != caller.owner:
        raise not_found(file_id)
    return fields


async def create_file(request: Request, caller: CallerDep, settings: SettingsDep) -> dict[str, Any]:
    """Upload a JSONL file (multipart: `file`, `purpose=batch`, optional `expires_after[anchor|seconds]`)."""
    store = file_store(request)
    try:
        uploaded = await receive_upload(request.headers.get("content-type"), request.stream(), store,
                                        new_file_id(), UploadRules(max_file_bytes=settings.files_max_upload_bytes))
    except UploadError as err:
        raise OpenAIError(err.status_code, err.message, code=err.code, param=err.param) from None
    stored = uploaded.stored
    fields = records.upload_fields(stored.name, caller.owner, stored.size, stored.created_at, uploaded.filename,
                                   uploaded.purpose, stored.expires_at, uploaded.lines)
    client = redis_of(request)
    pipe = client.pipeline(transaction=True)
    pipe.hset(redis_keys.file(stored.name), mapping=cast(Any, fields))
    pipe.expire(redis_keys.file(stored.name), records.record_ttl_s(stored.expires_at))
    pipe.zadd(redis_keys.files_of(caller.owner), {stored.name: time.time()})
    try:
        await pipe.execute()
    except Exception:
        await store.delete(stored.name)  # nothing kept that no record points to
        raise
    return records.file_object(fields)


async def list_files(
    request: Request,
    caller: CallerDep,
    after: Annotated[str | None, Query(max_length=128, description="A file id: list the files after it.")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)] = MAX_LIST_LIMIT,
    order: Annotated[Literal["asc", "desc"], Query(description="By creation time.")] = "desc",
    purpose: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    """The caller's files, newest first by default; `has_more` and `after` page through them."""
    listed = live_records(redis_of(request), redis_keys.files_of(caller.owner), redis_keys.file, after,
                          desc=order == "desc", kind="file")
    data: list[dict[str, Any]] = []
    async with aclosing(listed) as found:  # a page that ends early closes the scan
        async for fields in found:
            if purpose is None or fields.get("purpose") == purpose:
                data.append(records.file_object(fields))
                if len(data) > limit:
                    break
    return list_page(data, limit)


async def retrieve_file(request: Request, file_id: str, caller: CallerDep) -> dict[str, Any]:
    """One file's record."""
    return records.file_object(await owned_file(redis_of(request), file_id, caller))


async def file_content(request: Request, file_id: str, caller: CallerDep) -> Response:
    """The file's bytes, streamed from the store."""
    await owned_file(redis_of(request), file_id, caller)
    store = file_store(request)
    info = await store.stat(file_id)
    if info is None:
        raise not_found(file_id)
    return StreamingResponse(store.chunks(file_id), media_type="application/octet-stream",
                             headers={"Content-Length": str(info.size)})


async def delete_file(request: Request, file_id: str, caller: CallerDep) -> dict[str, Any]:
    """Delete the file's record and bytes."""
    client = redis_of(request)
    await owned_file(client, file_id, caller)
    pipe = client.pipeline(transaction=True)
    pipe.delete(redis_keys.file(file_id))
    pipe.zrem(redis_keys.files_of(caller.owner), file_id)
    await pipe.execute()
    await file_store(request).delete(file_id)
    return {"id": file_id, "object": "file", "deleted": True}


for base_path in BASE_PATHS:
    name = base_path.replace("/", "_")
    router.add_api_route(f"{base_path}/files", create_file, methods=["POST"], name=f"create_file{name}",
                         responses=ERRORS)
    router.add_api_route(f"{base_path}/files", list_files, methods=["GET"], name=f"list_files{name}",
                         responses=ERRORS)
    router.add_api_route(f"{base_path}/files/{{file_id}}", retrieve_file, methods=["GET"],
                         name=f"retrieve_file{name}", responses=ERRORS)
    router.add_api_route(f"{base_path}/files/{{file_id}}/content", file_content, methods=["GET"],
                         name=f"file_content{name}", responses={200: {"content": {"application/octet-stream": {}}},
                                                                **ERRORS})
    router.add_api_route(f"{base_path}/files/{{file_id}}", delete_file, methods=["DELETE"],
                         name=f"delete_file{name}", responses=ERRORS)
