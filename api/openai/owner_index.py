"""Paging through one owner's files or batches: a sorted set of ids by creation time, and a record per id.

Records expire on their own (a file with its `expires_after`, a batch with the result TTL) while their ids stay
in the owner's index; the scan drops such ids from the index as it meets them, so pages skip nothing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, cast

import redis.asyncio as aioredis

from llmq.api.openai.errors import OpenAIError

SCAN_PAGE = 200


async def live_records(
    client: aioredis.Redis, index: str, record_key: Callable[[str], str], after: str | None, *, desc: bool,
    kind: str,
) -> AsyncGenerator[dict[str, str], None]:
    """The records `index` names, in its order from just after the id `after`; 400 when `after` is not in it."""
    start = 0
    if after:
        rank = cast(int | None, await (client.zrevrank(index, after) if desc else client.zrank(index, after)))
        if rank is None:
            raise OpenAIError(400, f"after: no {kind} {after:.80} of this key to list from.", param="after")
        start = rank + 1
    while True:
        ids = cast(list[str], await client.zrange(index, start, start + SCAN_PAGE - 1, desc=desc))
        if not ids:
            return
        start += len(ids)
        pipe = client.pipeline(transaction=False)
        for item_id in ids:
            pipe.hgetall(record_key(item_id))
        gone = []
        for item_id, fields in zip(ids, await pipe.execute(), strict=True):
            if fields:
                yield fields
            else:
                gone.append(item_id)
        if gone:
            await client.zrem(index, *gone)
            start -= len(gone)  # they were in this page, before `start`


def list_page(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    """OpenAI's list object from up to `limit + 1` items: the extra one only tells that there are more."""
    page = data[:limit]
    return {"object": "list", "data": page, "has_more": len(data) > limit,
            "first_id": page[0]["id"] if page else None, "last_id": page[-1]["id"] if page else None}
