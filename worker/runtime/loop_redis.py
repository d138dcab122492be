"""Redis commands awaited on the worker's event loop, for the two scripts every job runs there.

A job's claim and last transition run on the event loop's thread, inside the task's greenback portal
(`llmq.worker.runtime.event_loop`). On the thread's held connection (`held_connection`) each one blocks the
whole loop until Redis answers: on a machine whose cores Redis shares with the worker, that was a fifth of the
loop's time during a 200-slot batch, every other call's answer and start waiting behind it. Awaited on
redis-py's asyncio client instead, only the task waits; the loop answers and starts other calls meanwhile. A
whole batch went from 0.865 to 0.89 of its ceiling (docs/batch.md).

Commands are packed with hiredis, as the synchronous client does when it is installed: redis-py's asyncio client
packs in Python, one argument at a time, and a transition script has some twenty arguments (the API's submit
script, some thirty: its clients use the same connection class). The `rediss://` and `unix://` schemes keep
redis-py's own connection classes, and its Python packing: a connection class given to `from_url` replaces the
one the scheme chose, and `rediss://` would have gone in plain text.
"""

from __future__ import annotations

from typing import Any

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import DataError

from llmq.worker.settings import Settings

# Connections the loop's script calls share; a call finding all of them busy waits its turn on the loop.
LOOP_CONNECTIONS = 16


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


def packing_connection(url: str) -> dict[str, Any]:
    """`from_url`'s keyword for the hiredis-packing connection, where the URL's scheme allows it."""
    return {"connection_class": HiredisPackingConnection} if url.startswith("redis://") else {}


def loop_client(settings: Settings) -> aioredis.Redis:
    """The worker's client for the event loop; its connections are made on first use, on the loop."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        decode_responses=True,
        encoding_errors="replace",  # as the synchronous client: a damaged record still reads
        socket_timeout=settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_socket_timeout_s,
        health_check_interval=30,
        retry_on_timeout=True,
        max_connections=LOOP_CONNECTIONS,
        timeout=settings.redis_socket_timeout_s,  # waiting for a free connection: an outage, not a queue
        **packing_connection(settings.redis_url),
    )
    return aioredis.Redis(connection_pool=pool)
