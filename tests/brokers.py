"""The brokers the end-to-end suite runs on: Redis (the default) and RabbitMQ, on a vhost of its own."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from llmq.worker.redis_keys import QUEUES_IN_ORDER
from llmq.worker.runtime.redis_transport import UNACKED_KEY

BROKERS = ["redis", "amqp"]
RABBITMQ = "127.0.0.1:5672"


def rabbitmqctl(*args: str) -> str:
    return subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True,
                          timeout=60).stdout


@contextmanager
def rabbitmq_vhost() -> Iterator[str]:
    """A fresh vhost on the machine's RabbitMQ, deleted afterwards: the shared server stays clean."""
    vhost = f"llmq-test-{uuid.uuid4().hex[:12]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBITMQ}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


def pending_messages(broker_url: str, redis_url: str) -> int:
    """Messages still queued or unacknowledged on the broker."""
    if broker_url.startswith("amqp://"):
        vhost = broker_url.rsplit("/", 1)[1]
        rows = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages").split("\n")
        return sum(int(row.split()[1]) for row in rows if row.split() and row.split()[0] in QUEUES_IN_ORDER)
    client = redis.Redis.from_url(redis_url)
    try:
        return sum(client.llen(name) for name in QUEUES_IN_ORDER) + client.zcard(UNACKED_KEY)
    finally:
        client.close()
