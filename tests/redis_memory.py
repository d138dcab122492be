"""A Redis at its `maxmemory`, as a production Redis under `noeviction` fills up, and the limit given back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis


@contextmanager
def limited(client: redis.Redis, headroom_bytes: int) -> Iterator[None]:
    """`maxmemory` set `headroom_bytes` from what Redis uses now (below it, if negative); as it was afterwards."""
    before = client.config_get("maxmemory")["maxmemory"]
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", max(used + headroom_bytes, 1))
    try:
        yield
    finally:
        client.config_set("maxmemory", before)


@contextmanager
def filled(client: redis.Redis) -> Iterator[None]:
    """Every write refused (`OOM command not allowed`) until the block ends.

    A limit below what Redis uses rather than filler data: a Redis that is just at its limit dips under it
    whenever a client's buffers are freed, and would take some writes."""
    used = int(client.info("memory")["used_memory"])
    with limited(client, -used // 2):
        yield
