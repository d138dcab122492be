"""The Redis transport records a delivery and its acknowledgement in two commands each, in a safe order."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection

from devstack.redis_server import RedisServer
from worker.celery_app import REDIS_TRANSPORT

DB = 15
STOP = "command-log-stop"


@pytest.fixture
def db_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


class CommandLog:
    """The commands Redis runs on database DB, from MONITOR, on a thread."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.commands: list[str] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=10)
        with client.monitor() as monitor:
            self._ready.set()
            while True:
                entry = monitor.next_command()
                if entry["db"] != DB or entry["client_type"] == "lua":
                    continue
                if entry["command"] == f"ECHO {STOP}":
                    break
                self.commands.append(entry["command"].split(" ", 1)[0].upper())
        client.close()

    def __enter__(self) -> CommandLog:
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        # Commands reach MONITOR in the order Redis ran them: once this one is seen, so is everything before.
        redis.Redis.from_url(self.url).echo(STOP)
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_a_delivery_and_its_ack_cost_two_commands_each_and_leave_nothing(db_url: str) -> None:
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    with Connection(db_url, transport=REDIS_TRANSPORT) as conn, conn.SimpleQueue("transport-test") as queue:
        queue.put({"n": 1})
        with CommandLog(db_url) as delivery:
            message = queue.get(timeout=5)
        tag = message.delivery_tag
        assert message.payload == {"n": 1}
        assert raw.hexists("unacked", tag) and raw.zscore("unacked_index", tag) is not None
        with CommandLog(db_url) as log:
            message.ack()
    # Index first, then the message: cut between the two, nothing is stored that the index does not know.
    assert delivery.commands.count("ZADD") == 1 and delivery.commands.count("HSET") == 1
    assert delivery.commands.index("ZADD") < delivery.commands.index("HSET")
    assert "MULTI" not in delivery.commands
    assert log.commands.count("HDEL") == 1 and log.commands.count("ZREM") == 1
    # Message first, then its index entry: cut between the two, the restore pass finds no message to bring back.
    assert log.commands.index("HDEL") < log.commands.index("ZREM")
    assert "MULTI" not in log.commands and "EXEC" not in log.commands
    assert not raw.hexists("unacked", tag) and raw.zscore("unacked_index", tag) is None
    raw.close()


def test_an_index_entry_without_its_message_is_dropped_by_the_restore_pass(db_url: str) -> None:
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    raw.zadd("unacked_index", {"orphan-tag": 1.0})  # what a cut between the two writes can leave
    with Connection(db_url, transport=REDIS_TRANSPORT,
                    transport_options={"visibility_timeout": 1, "unacked_restore_throttle": 1}) as conn:
        channel = conn.channel()
        channel.qos.restore_visible(num=10)
        channel.close()
    assert raw.zscore("unacked_index", "orphan-tag") is None
    assert raw.llen("transport-test") == 0
    raw.close()
