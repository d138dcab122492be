"""A thread keeps one connection for its commands; a lost connection falls back to the client's retries."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker.runtime.held_connection import HeldConnections


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    # Commands that touch no data: the shared test Redis needs no database of its own here.
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, retry_on_timeout=True)
    yield client
    client.close()


def in_thread(fn: Any) -> Any:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(fn()))
    thread.start()
    thread.join(10)
    return out[0]


def test_a_thread_keeps_one_connection_and_replies_are_decoded_as_the_client_decodes(client: redis.Redis) -> None:
    held = HeldConnections(client)
    first, second = held.execute("CLIENT", "ID"), held.execute("CLIENT", "ID")
    assert first == second
    assert held.execute("ECHO", "héllo") == "héllo"
    other = in_thread(lambda: held.execute("CLIENT", "ID"))
    assert other != first  # another thread, another connection
    # The kept connections are out of the pool: the client's own commands never get them.
    assert client.client_id() not in (first, other)


def test_threads_beyond_the_limit_use_the_pool(client: redis.Redis) -> None:
    held = HeldConnections(client, max_held=1)
    kept = held.execute("CLIENT", "ID")
    available_before = len(client.connection_pool._available_connections)
    in_thread(lambda: held.execute("CLIENT", "ID"))
    # The second thread borrowed a connection and gave it back, rather than keeping one.
    assert len(client.connection_pool._available_connections) == available_before + 1
    assert held.execute("CLIENT", "ID") == kept


def test_a_killed_connection_is_replaced_without_an_error(client: redis.Redis) -> None:
    held = HeldConnections(client)
    lost = held.execute("CLIENT", "ID")
    assert client.client_kill_filter(_id=lost) == 1
    assert held.execute("ECHO", "still here") == "still here"  # through the client's retrying path
    replacement = held.execute("CLIENT", "ID")
    assert replacement != lost
    assert held.execute("CLIENT", "ID") == replacement  # and kept again


def test_an_error_reply_is_raised_and_the_connection_stays_usable(client: redis.Redis) -> None:
    held = HeldConnections(client)
    conn_id = held.execute("CLIENT", "ID")
    with pytest.raises(redis.ResponseError, match="unknown command"):
        held.execute("NO-SUCH-COMMAND")
    with pytest.raises(redis.exceptions.NoScriptError):
        held.execute("EVALSHA", "0" * 40, 0)
    assert held.execute("CLIENT", "ID") == conn_id
