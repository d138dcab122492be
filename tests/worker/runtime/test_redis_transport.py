"""The Redis transport records a delivery in one command and acknowledgements in one (a batch, in a worker), and
restores safely."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from kombu import Connection, Consumer, Queue
from kombu.asynchronous import Hub
from kombu.message import Message

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.celery_app import REDIS_TRANSPORT, celery_config
from llmq.worker.runtime.lanes import worker_lanes
from llmq.worker.runtime.redis_transport import TAKE, UNACKED_KEY
from llmq.worker.settings import load_settings
from tests.redis_memory import filled
from tests.redis_monitor import CommandLog

DB = 15


@pytest.fixture
def db_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_a_delivery_and_its_ack_cost_one_command_each_and_leave_nothing(db_url: str) -> None:
    """One TAKE pops the message and records it as unacknowledged; one ZREM acknowledges it."""
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    raw.script_load(TAKE)  # as after a worker's first take
    with Connection(db_url, transport=REDIS_TRANSPORT) as conn, conn.SimpleQueue("transport-test") as queue:
        queue.put({"n": 1})
        with CommandLog(db_url) as delivery:
            message = queue.get(timeout=5)
        assert message.payload == {"n": 1}
        # The set holds the message itself, findable by its unique delivery tag.
        members = raw.zrange(UNACKED_KEY, 0, -1)
        assert len(members) == 1 and message.delivery_tag in members[0]
        with CommandLog(db_url) as log:
            message.ack()
    assert delivery.commands == ["EVALSHA"]
    assert log.commands == ["ZREM"]
    assert raw.zcard(UNACKED_KEY) == 0
    assert not raw.exists("unacked", "unacked_index")  # kombu's own two structures are not used
    raw.close()


@contextmanager
def delivered_in_a_worker(url: str, count: int = 1) -> Iterator[tuple[list[Message], Hub]]:
    """Messages taken off a queue by a consumer registered with kombu's hub, as Celery's worker registers it."""
    hub = Hub()
    with Connection(url, transport=REDIS_TRANSPORT) as conn, conn.SimpleQueue("transport-test") as queue:
        for n in range(count):
            queue.put({"n": n})
        messages = [queue.get(timeout=5) for _ in range(count)]
        conn.transport.register_with_event_loop(conn.connection, hub)
        yield messages, hub
    hub.close()


def test_in_a_worker_acks_wait_for_the_hub_and_share_one_zrem(db_url: str) -> None:
    """Tasks ack on the event loop's thread; one ZREM on the hub's thread records all of them."""
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    with delivered_in_a_worker(db_url, count=3) as (messages, hub), CommandLog(db_url) as log:
        acks = threading.Thread(target=lambda: [message.ack() for message in messages])
        acks.start()
        acks.join(5)
        assert raw.zcard(UNACKED_KEY) == 3  # acknowledged, not yet recorded
        deadline = time.monotonic() + 5
        while raw.zcard(UNACKED_KEY) and time.monotonic() < deadline:
            hub.run_once()
    zrems = [line for line in log.lines if line.upper().startswith("ZREM")]
    assert len(zrems) == 1 and all(message.delivery_tag in zrems[0] for message in messages)
    assert raw.zcard(UNACKED_KEY) == 0
    raw.close()


def test_acks_still_waiting_are_recorded_when_the_channel_closes(db_url: str) -> None:
    """A warm shutdown closes the channel before the hub's timer fires: the acks must not be lost with it."""
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    with delivered_in_a_worker(db_url) as ([message], _):
        message.ack()
        assert raw.zcard(UNACKED_KEY) == 1
    # The channel is closed; the hub never ran.
    assert raw.zcard(UNACKED_KEY) == 0
    raw.close()


def test_acks_that_cannot_be_recorded_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    """Redis gone at flush time must not stop the hub: the messages come back after the visibility timeout."""
    with RedisServer(appendonly=False) as server, caplog.at_level("WARNING", logger="llmq.broker"), \
            delivered_in_a_worker(server.url) as ([message], _):
        message.ack()
        server.stop()
        message.channel.qos.flush_acks()
        assert "could not record 1 acknowledgement(s) (ConnectionError)" in caplog.text


def test_the_worker_reads_its_queues_as_one_list_each_in_priority_order(db_url: str) -> None:
    """A job's priority is its queue; kombu's priority steps would make every BRPOP name four lists per queue."""
    options = celery_config(load_settings(redis_url=db_url))["broker_transport_options"]
    received: list[object] = []

    def on_message(body: object, message: Message) -> None:
        received.append(body)
        message.ack()

    with Connection(db_url, transport=REDIS_TRANSPORT, transport_options=options) as conn:
        with conn.SimpleQueue(redis_keys.QUEUES_IN_ORDER[2]) as queue:
            queue.put({"n": 3})
        queues = [Queue(name) for name in redis_keys.QUEUES_IN_ORDER]
        with Consumer(conn.channel(), queues=queues, callbacks=[on_message], accept=["json"]), \
                CommandLog(db_url) as log:
            conn.drain_events(timeout=5)
    assert received == [{"n": 3}]
    take = next(line for line in log.lines if line.upper().startswith("EVALSHA")).replace('"', "").split()
    queues = len(redis_keys.QUEUES_IN_ORDER)
    assert take[2:6 + queues] == [str(3 + queues), UNACKED_KEY, redis_keys.FAIR_APPS, redis_keys.FAIR_DOORBELL,
                                  *redis_keys.QUEUES_IN_ORDER]


@pytest.mark.parametrize("calls_full", [False, True])
def test_while_the_calls_lane_is_full_the_worker_comes_back_for_its_queues_soon(db_url: str, calls_full: bool) -> None:
    """A call's slot frees on the event loop's thread, which cannot cut the consumer's BRPOP short. With the call
    queues left out of it, the BRPOP waits a 50th of a typical call, and again while the lane is still full (no TAKE
    in between); it waited kombu's second, and a batch whose calls ended together took its next lines only once a
    batch step's message woke the worker (docs/batch.md)."""
    options = celery_config(load_settings(redis_url=db_url))["broker_transport_options"]
    calls = worker_lanes().calls
    held_before, calls.held = calls.held, calls.limit if calls_full else 0
    typical_before, calls.typical_s = calls.typical_s, 1.0
    try:
        with Connection(db_url, transport=REDIS_TRANSPORT, transport_options=options) as conn:
            queues = [Queue(name) for name in redis_keys.QUEUES_IN_ORDER]
            with Consumer(conn.channel(), queues=queues, accept=["json"]), CommandLog(db_url) as log:
                with pytest.raises(socket.timeout):
                    conn.drain_events(timeout=1.5)
                brpop_timeout = conn.default_channel.brpop_timeout
    finally:
        calls.held, calls.typical_s = held_before, typical_before
    waits = [line.replace('"', "").split() for line in log.lines if line.upper().startswith(("BRPOP", "EVALSHA"))]
    assert waits[0][0].upper() == "EVALSHA" and waits[1:]  # the first TAKE found nothing: the worker waits
    brpops = [command for command in waits if command[0].upper() == "BRPOP"]
    if calls_full:
        assert len(brpops) == len(waits) - 1  # the lane still full: no TAKE in between
    for command in brpops:
        names_a_call_queue = bool(set(command[1:-1]) & set(redis_keys.QUEUE_BY_PRIORITY.values()))
        assert names_a_call_queue is not calls_full
    timeouts = [float(command[-1]) for command in brpops]
    if calls_full:
        assert len(timeouts) >= 5 and timeouts == [1.0 / 50] * len(timeouts)
    else:
        assert timeouts == [brpop_timeout] * len(timeouts)


def test_an_overdue_message_goes_back_to_its_queue_once(db_url: str) -> None:
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    options = {"visibility_timeout": 1, "unacked_restore_throttle": 1}
    with Connection(db_url, transport=REDIS_TRANSPORT, transport_options=options) as conn, \
            conn.SimpleQueue("transport-test") as queue:
        queue.put({"n": 2})
        message = queue.get(timeout=5)
        member = raw.zrange(UNACKED_KEY, 0, -1)[0]
        raw.zadd(UNACKED_KEY, {member: 1.0})  # delivered long ago: its worker is gone
        # Two restore passes (two workers) find it: only one pushes it back.
        channel = conn.channel()
        channel.qos.restore_visible(num=10)
        channel.qos.restore_visible(num=10)
        assert raw.zcard(UNACKED_KEY) == 0 and raw.llen("transport-test") == 1
        again = queue.get(timeout=5)
        assert again.payload == {"n": 2} and again.delivery_tag == message.delivery_tag
        assert again.delivery_info.get("redelivered") or again.headers.get("redelivered")
        again.ack()
        channel.close()
    assert raw.zcard(UNACKED_KEY) == 0 and raw.llen("transport-test") == 0
    raw.close()


def test_a_rejected_message_is_requeued_behind_the_waiting_ones(db_url: str) -> None:
    """As kombu's own transport does: a message handed back with requeue goes to the end of its queue."""
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    with Connection(db_url, transport=REDIS_TRANSPORT) as conn, conn.SimpleQueue("transport-test") as queue:
        queue.put({"n": "first"})
        queue.put({"n": "second"})
        first = queue.get(timeout=5)  # one TAKE took both: the second waits in the consumer's buffer
        first.requeue()
        assert not any(first.delivery_tag in member for member in raw.zrange(UNACKED_KEY, 0, -1))
        second = queue.get(timeout=5)
        assert second.payload == {"n": "second"}
        second.ack()
        again = queue.get(timeout=5)
        assert again.payload == {"n": "first"} and again.delivery_tag == first.delivery_tag
        again.ack()
        assert raw.zcard(UNACKED_KEY) == 0
    raw.close()


def test_an_unreadable_entry_is_dropped_by_the_restore_pass(db_url: str) -> None:
    raw = redis.Redis.from_url(db_url, decode_responses=True)
    raw.zadd(UNACKED_KEY, {"not a message": 1.0})
    with Connection(db_url, transport=REDIS_TRANSPORT,
                    transport_options={"visibility_timeout": 1, "unacked_restore_throttle": 1}) as conn:
        channel = conn.channel()
        channel.qos.restore_visible(num=10)
        channel.close()
    assert raw.zcard(UNACKED_KEY) == 0
    assert raw.llen("transport-test") == 0
    raw.close()


def test_a_full_redis_refuses_the_take_and_the_message_stays_in_its_queue(caplog: pytest.LogCaptureFixture) -> None:
    """The worker's crash on a full Redis: a message popped, then its record refused. Now nothing is popped."""
    with RedisServer(appendonly=False) as server, Connection(server.url, transport=REDIS_TRANSPORT) as conn, \
            conn.SimpleQueue("transport-test") as queue:
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        queue.put({"n": 1})
        with filled(raw), caplog.at_level("WARNING", logger="llmq.broker"):
            with pytest.raises(queue.Empty):
                queue.get(timeout=2)
            assert raw.llen("transport-test") == 1 and raw.zcard(UNACKED_KEY) == 0
        assert "Redis is full (OutOfMemoryError" in caplog.text
        message = queue.get(timeout=5)  # once Redis has room, after the pause
        assert message.payload == {"n": 1} and raw.zcard(UNACKED_KEY) == 1
        message.ack()
        assert raw.zcard(UNACKED_KEY) == 0
        raw.close()


def test_a_message_that_wakes_a_waiting_worker_is_recorded_even_on_a_full_redis() -> None:
    """Only a worker whose queues were empty blocks in BRPOP; what wakes it is recorded whatever the memory."""
    with RedisServer(appendonly=False) as server, Connection(server.url, transport=REDIS_TRANSPORT) as conn, \
            conn.SimpleQueue("transport-test") as queue:
        raw = redis.Redis.from_url(server.url, decode_responses=True)
        before = raw.config_get("maxmemory")["maxmemory"]
        queue.put({"n": 0})
        queue.get(timeout=5).ack()
        pusher = Connection(server.url, transport=REDIS_TRANSPORT)

        def push_then_fill() -> None:
            time.sleep(1.5)  # the consumer's TAKE found nothing: it waits in BRPOP
            with pusher.SimpleQueue("transport-test") as other:
                message = other.channel.prepare_message(json.dumps({"n": 1}), content_type="application/json")
                other.channel._inplace_augment_message(message, "", "transport-test")
            # The message arrives and Redis is full before the waiting worker gets to record it.
            with raw.pipeline(transaction=True) as pipe:
                pipe.lpush("transport-test", json.dumps(message))
                pipe.config_set("maxmemory", 1)
                pipe.execute()

        with CommandLog(server.url) as log:
            thread = threading.Thread(target=push_then_fill)
            thread.start()
            try:
                message = queue.get(timeout=10)
            finally:
                thread.join(5)
                raw.config_set("maxmemory", before)
        pusher.release()
        assert message.payload == {"n": 1}
        assert "BRPOP" in log.commands and "EVAL" in log.commands  # the ZADD refused, the allow-oom script not
        assert [member for member in raw.zrange(UNACKED_KEY, 0, -1) if message.delivery_tag in member]
        message.ack()
        assert raw.zcard(UNACKED_KEY) == 0
        raw.close()
