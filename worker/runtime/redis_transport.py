"""Kombu's Redis transport, made to survive losing Redis while messages are in hand, and cheaper per message.

When the connection drops, Celery closes the old channel and kombu tries to push the
messages this worker holds back onto their queues; later, tasks that were running
acknowledge or reject messages of that closed channel. With Redis gone, or the channel's
connection already released, each of these raises, and Celery stops the whole worker as
"unrecoverable". None of it is needed: those messages sit in Redis's unacked set and
come back after the visibility timeout, where a finished job's message finds nothing to
do. So on a closed channel these become logged no-ops, and the worker reconnects.

Kombu also builds a new redis-py client object for every delivery, acknowledgement and
event it publishes; the constructor (a table of ~200 reply parsers) cost a worker about
7 % of its CPU. The object holds no connection of its own, so the channel keeps one.

And kombu records a delivery twice: its tag in a sorted set by time (`unacked_index`) and
the message in a hash by tag (`unacked`), two writes to record it and two to acknowledge
it. Here one sorted set holds the message itself, scored by its delivery time: one `ZADD`
records a delivery, one `ZREM` acknowledges it, and the restore pass finds in the same set
both which messages are overdue and what to push back. A message carries its own unique
delivery tag, so no two members are alike. A restore takes the member out and pushes the
message back in one script, so two workers restoring at once cannot both push it.

In a worker, acknowledgements are recorded in batches: the tasks' acks come from the event
loop's thread, where a blocking round trip holds up every call in flight, one per job. They
are collected for up to `ACK_BATCH_S` and removed with one `ZREM` on the consumer's thread.
A worker that dies in between leaves those messages in the set; like those of its calls in
flight, they come back after the visibility timeout, where the claim (`llmq.worker.jobs.scripts`)
does nothing for a finished job and lets one delivery of a job run at a time.

And a worker's BRPOP leaves out the queues of a lane whose slots are all taken
(`llmq.worker.runtime.lanes`): slow webhook deliveries never take messages into slots that
proxy calls need, nor the other way round.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str

from llmq.worker.runtime.held_connection import HeldConnections
from llmq.worker.runtime.hub_flush import HubFlush
from llmq.worker.runtime.lanes import Lanes, worker_lanes

log = logging.getLogger("llmq.broker")

# The sorted set of delivered, unacknowledged messages: member [payload, exchange, routing key], score delivery time.
UNACKED_KEY = "llmq.unacked"

# How long an acknowledgement may wait to share a ZREM with others: at 350 jobs/s, about 17 of them.
ACK_BATCH_S = 0.05

# KEYS: the unacked set, then the queues to push to. ARGV: the member, the payload to push, LPUSH | RPUSH.
# Only whoever takes the member out pushes the message back.
RESTORE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
for i = 2, #KEYS do redis.call(ARGV[3], KEYS[i], ARGV[2]) end
return 1
"""


class QoS(kombu_redis.QoS):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The exact member each unacknowledged delivery was recorded under, to remove it by.
        self._members: dict[str, str] = {}
        # Members acknowledged and not yet removed; appended from any thread, flushed on the hub's.
        self._acked: list[str] = []
        self._acked_lock = threading.Lock()
        self._ack_flush = HubFlush(self.flush_acks, ACK_BATCH_S)

    def _channel_gone(self) -> bool:
        return self.channel.connection is None or self.channel.closed

    def append(self, message, delivery_tag):  # type: ignore[no-untyped-def]
        delivery = message.delivery_info
        member = json.dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self.channel.held().execute("ZADD", self.unacked_index_key, time(), member)
        self._members[delivery_tag] = member
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("ack of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        self._forget(delivery_tag)
        return virtual.QoS.ack(self, delivery_tag)

    def reject(self, delivery_tag, requeue=False):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("reject of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag)
        return virtual.QoS.ack(self, delivery_tag)

    def _forget(self, delivery_tag: str) -> None:
        member = self._members.pop(delivery_tag, None)
        if member is None:
            return
        hub = self.channel.connection.hub
        if hub is None:  # not in a worker's event loop: nothing would flush a batch
            self.channel.held().execute("ZREM", self.unacked_index_key, member)
            return
        with self._acked_lock:
            self._acked.append(member)
        self._ack_flush.request(hub)

    def flush_acks(self) -> None:
        """Removes every acknowledged member collected so far, in one command."""
        with self._acked_lock:
            members, self._acked = self._acked, []
        if not members:
            return
        try:
            self.channel.held().execute("ZREM", self.unacked_index_key, *members)
        except Exception as err:
            log.warning("could not record %d acknowledgement(s) (%s); those messages come back after the "
                        "visibility timeout, and a finished job's claim skips them", len(members), type(err).__name__)

    def restore_unacked_once(self, stderr=None):  # type: ignore[no-untyped-def]
        self.flush_acks()  # the channel is closing: its acknowledged messages must not come back
        return super().restore_unacked_once(stderr)

    def restore_unacked(self, client=None):  # type: ignore[no-untyped-def]
        try:
            with self.channel.conn_or_acquire(client) as client:
                for tag in list(self._delivered):
                    self.restore_by_tag(tag, client)
        except Exception as err:
            log.warning("could not hand %d message(s) back on close (%s); they return after the visibility timeout",
                        len(self._members), type(err).__name__)
        self._delivered.clear()
        self._members.clear()

    def restore_by_tag(self, tag, client=None, leftmost=False):  # type: ignore[no-untyped-def]
        member = self._members.pop(tag, None)
        if member is not None:
            with self.channel.conn_or_acquire(client) as client:
                self._restore_member(client, member, leftmost)

    def restore_visible(self, start=0, num=10, interval=10):  # type: ignore[no-untyped-def]
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        with self.channel.conn_or_acquire() as client:
            ceil = time() - self.visibility_timeout
            try:
                with kombu_redis.Mutex(client, self.unacked_mutex_key, self.unacked_mutex_expire):
                    overdue = client.zrange(self.unacked_index_key, ceil, 0, desc=True, byscore=True,
                                            offset=num and start, num=num)
                    for member in overdue or []:
                        self._restore_member(client, bytes_to_str(member), leftmost=False)
            except kombu_redis.MutexHeld:
                pass

    def _restore_member(self, client: Any, member: str, leftmost: bool) -> None:
        try:
            payload, exchange, routing_key = json.loads(member)
            queues = self.channel.restore_queues(payload, exchange, routing_key)
        except Exception:
            log.error("dropping an unreadable entry of the unacked set: %.200r", member)
            client.zrem(self.unacked_index_key, member)
            return
        client.eval(RESTORE, 1 + len(queues), self.unacked_index_key, *queues,
                    member, json.dumps(payload), "LPUSH" if leftmost else "RPUSH")


class LaneCycle:
    """Kombu's queue cycle, whose `consume` (the queues of the next BRPOP) leaves out those of a full lane."""

    def __init__(self, cycle: Any, lanes: Lanes) -> None:
        self._cycle = cycle
        self._lanes = lanes

    def consume(self, n: int) -> list[str]:
        return self._lanes.open_queues(self._cycle.consume(n))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cycle, name)


class Channel(kombu_redis.Channel):
    QoS = QoS
    unacked_index_key = UNACKED_KEY
    _shared_client: Any = None
    _held: HeldConnections | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # With every lane full, kombu sends no BRPOP at all until a slot frees (it asks again each loop turn).
        self._queue_cycle = LaneCycle(self._queue_cycle, worker_lanes())

    def _shared(self) -> Any:
        shared = self._shared_client
        # A new pool (after a reconnect) gets a new client.
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
            self._held = HeldConnections(shared)
        return shared

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        yield client or self._shared()

    def held(self) -> HeldConnections:
        """The unacked set's commands, one per delivery and one per acknowledgement, on a held connection."""
        self._shared()
        assert self._held is not None
        return self._held

    def restore_queues(self, payload: dict[str, Any], exchange: str, routing_key: str) -> list[str]:
        """Marks a message redelivered and names the queues it goes back to (kombu's `_do_restore_message`)."""
        headers = payload.get("headers")
        if isinstance(headers, dict):
            headers["redelivered"] = True
        delivery_info = payload.get("properties", {}).get("delivery_info")
        if isinstance(delivery_info, dict):
            delivery_info["redelivered"] = True
        priority = self._get_message_priority(payload, reverse=False)
        return [self._q_for_pri(queue, priority) for queue in self._lookup(exchange, routing_key)]

    def _restore(self, message, leftmost=False):  # type: ignore[no-untyped-def]
        self.qos.restore_by_tag(message.delivery_tag, leftmost=leftmost)


class Transport(kombu_redis.Transport):
    Channel = Channel
    # The worker's event loop (kombu's hub), once Celery's consumer registers with it.
    hub: Any = None

    def register_with_event_loop(self, connection, loop):  # type: ignore[no-untyped-def]
        super().register_with_event_loop(connection, loop)
        self.hub = loop


def deliveries_before(client: Any, delivered_before: float, limit: int) -> list[str]:
    """Members of the unacked set delivered before `delivered_before`, oldest first (at most `limit`)."""
    members = client.zrangebyscore(UNACKED_KEY, "-inf", delivered_before, start=0, num=limit)
    return [bytes_to_str(member) for member in members]


def task_of(member: str) -> tuple[str, list[Any], str] | None:
    """(task name, positional args, routing key) of an unacked member; None for one that is not a task."""
    try:
        payload, _, routing_key = json.loads(member)
        args = json.loads(base64.b64decode(payload["body"]))[0]
        return payload["headers"]["task"], args, routing_key
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def push_back(client: Any, member: str, queue: str) -> bool:
    """Hand one unacknowledged delivery back to `queue` before its visibility timeout, as a restore would.

    True if this call took it out of the set (so no one else pushes it, and its late acknowledgement, if its
    worker was alive after all, removes nothing)."""
    payload, _, _ = json.loads(member)
    headers = payload.get("headers")
    if isinstance(headers, dict):
        headers["redelivered"] = True
    return bool(client.eval(RESTORE, 2, UNACKED_KEY, queue, member, json.dumps(payload), "RPUSH"))
