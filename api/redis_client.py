"""The API's Redis clients: redis-py's asyncio client, packing commands with hiredis.

redis-py's synchronous client packs commands with hiredis when it is installed; its asyncio
client always packs them in Python, one argument at a time. A job's submit script has some
thirty arguments, and packing them was over a quarter of a 1,000-job batch's CPU. The connection
class is the worker's loop client's (`llmq.worker.runtime.loop_redis`), on `redis://` URLs only.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from llmq.worker.runtime.loop_redis import packing_connection
from llmq.worker.settings import Settings


def connect(settings: Settings, socket_timeout_s: float | None, single_connection: bool = False) -> aioredis.Redis:
    """A client of the API; with `single_connection`, one that holds one connection of its own."""
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=True,
        encoding_errors="replace",  # a damaged record (bytes that are not UTF-8) still reads
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
        max_connections=10_000,
        single_connection_client=single_connection,
        **packing_connection(settings.redis_url),
    )
