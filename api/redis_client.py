"""The API's Redis clients: redis-py's asyncio client, packing commands with hiredis.

redis-py's synchronous client packs commands with hiredis when it is installed; its asyncio
client always packs them in Python, one argument at a time. A job's submit script has some
thirty arguments, and packing them was over a quarter of a 1,000-job batch's CPU. The
`rediss://` and `unix://` schemes bring their own connection classes and keep Python packing.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError

from llmq.worker.settings import Settings


class HiredisPackingConnection(aioredis.Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py's HiredisRespSerializer, less its pass converting bytearray and memoryview
        # arguments, which llmq never sends: that pass was half of the packing time.
        name = args[0]
        if isinstance(name, str) and " " in name:  # "SCRIPT EXISTS" and the like go as separate words
            args = (*name.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as err:
            raise DataError(err) from None


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
        connection_class=HiredisPackingConnection,
        single_connection_client=single_connection,
    )
