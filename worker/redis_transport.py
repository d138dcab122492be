"""Kombu's Redis transport, made to survive losing Redis while messages are in hand, and cheaper per message.

When the connection drops, Celery closes the old channel and kombu tries to push the
messages this worker holds back onto their queues; later, tasks that were running
acknowledge or reject messages of that closed channel. With Redis gone, or the channel's
connection already released, each of these raises, and Celery stops the whole worker as
"unrecoverable". None of it is needed: those messages sit in Redis's unacked index and
come back after the visibility timeout, where a finished job's message finds nothing to
do. So on a closed channel these become logged no-ops, and the worker reconnects.

Kombu also builds a new redis-py client object for every delivery, acknowledgement and
event it publishes; the constructor (a table of ~200 reply parsers) cost a worker about
7 % of its CPU. The object holds no connection of its own, so the channel keeps one.

And it wraps the two writes that record a delivery, and the two that acknowledge it, in
MULTI/EXEC: four commands where two do. Without the transaction, the order alone keeps
the unacked index safe: a delivery is indexed before its message is stored, and an ack
removes the message before its index entry. Cut between the two, what remains is an
index entry without a message, which the restore pass drops. (The message already left
its queue with BRPOP before either write, so the transaction never closed that window.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger("llmq.broker")


class QoS(kombu_redis.QoS):
    def _channel_gone(self) -> bool:
        return self.channel.connection is None or self.channel.closed

    def restore_unacked(self, client=None):  # type: ignore[no-untyped-def]
        try:
            return super().restore_unacked(client)
        except Exception as err:
            log.warning("could not hand %d message(s) back on close (%s); they return after the visibility timeout",
                        len(self._delivered), type(err).__name__)
            self._delivered.clear()
            return None

    def ack(self, delivery_tag):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("ack of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        return super().ack(delivery_tag)

    def reject(self, delivery_tag, requeue=False):  # type: ignore[no-untyped-def]
        if self._channel_gone():
            log.info("reject of a message from a closed channel skipped; it returns after the visibility timeout")
            return None
        return super().reject(delivery_tag, requeue=requeue)

    @contextmanager
    def pipe_or_acquire(self, pipe: Any = None, client: Any = None) -> Iterator[Any]:
        # Used by kombu only for recording a delivery and removing it (ack, reject): see the module's note.
        if pipe:
            yield pipe
            return
        with self.channel.conn_or_acquire(client) as acquired:
            yield acquired.pipeline(transaction=False)

    def _remove_from_indices(self, delivery_tag, pipe=None):  # type: ignore[no-untyped-def]
        with self.pipe_or_acquire(pipe) as pipe:
            return pipe.hdel(self.unacked_key, delivery_tag).zrem(self.unacked_index_key, delivery_tag)


class Channel(kombu_redis.Channel):
    QoS = QoS
    _shared_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        shared = self._shared_client
        # A new pool (after a reconnect) gets a new client.
        if shared is None or shared.connection_pool is not self.pool:
            shared = self._shared_client = self._create_client()
        yield shared


class Transport(kombu_redis.Transport):
    Channel = Channel
