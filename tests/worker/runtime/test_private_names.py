"""Every private name of a library that llmq relies on (the manifest in `llmq.worker.runtime`), checked against the
installed libraries: an upgrade that moves or changes one fails here, naming it and the module that needs it.

Names are checked on real objects where one is cheap to make (a channel of kombu's own Redis transport on the
test Redis, an httpx2 transport, a Celery pool); a function llmq copies is checked by a digest of its source, so
any change to the original asks for the copy to be compared again.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hiredis
import httpcore2
import httptools
import httpx2
import pytest
import redis
import redis.asyncio
from celery.concurrency.base import BasePool, apply_target
from celery.events.dispatcher import EventDispatcher
from celery.worker.consumer import Consumer
from celery.worker.consumer.events import Events
from kombu import Connection
from kombu.asynchronous import Hub
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

import llmq.worker.runtime as runtime
from llmq.devstack.redis_server import RedisServer

RUNTIME = "llmq.worker.runtime"


def source(fn: Callable[..., Any]) -> str:
    return inspect.getsource(fn)


def digest(fn: Callable[..., Any]) -> str:
    return hashlib.sha256(source(fn).encode()).hexdigest()[:16]


def params(fn: Callable[..., Any]) -> list[str]:
    return list(inspect.signature(fn).parameters)


def optional_after_self(fn: Callable[..., Any]) -> bool:
    """Callable with no argument but `self`."""
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in list(inspect.signature(fn).parameters.values())[1:])


@dataclass(frozen=True)
class Kombu:
    """A channel of kombu's own Redis transport (not llmq's), and a message it made."""

    channel: Any
    message: Any
    payload: dict[str, Any]


@pytest.fixture(scope="module")
def kombu(redis_server: RedisServer) -> Iterator[Kombu]:
    payload = {"body": "", "headers": {}, "content-type": "application/json",
               "properties": {"delivery_tag": "tag-1", "delivery_info": {"exchange": "", "routing_key": "q"}}}
    with Connection(redis_server.url) as conn:
        channel = conn.default_channel
        assert type(channel) is kombu_redis.Channel
        yield Kombu(channel, channel.message_to_python(payload), payload)


def hub_wakes_from_another_thread() -> bool:
    """kombu 5.7's `Hub.call_soon` from another thread makes the hub's poller ready, so a hub waiting in it wakes;
    before, the callback waited for the poller's timeout (up to 10 s)."""
    hub = Hub()
    idle, other_end = socket.socketpair()
    try:
        hub.add_reader(idle, lambda *_: idle.recv(1))
        other_end.send(b"x")
        hub.run_once()  # this thread is now the hub's, and its poller has nothing more to report
        caller = threading.Thread(target=hub.call_soon, args=(lambda: None,))
        caller.start()
        caller.join(10)
        return bool(hub.poller.poll(0))
    finally:
        hub.close()
        idle.close()
        other_end.close()


# (private name, llmq module that needs it, check): a check returns True while the name is as llmq uses it.
CASES: list[tuple[str, str, Callable[[Kombu], bool]]] = [
    # kombu, for redis_transport
    ("kombu virtual.Message._raw", f"{RUNTIME}.redis_transport",
     lambda k: k.message._raw is k.payload),
    ("kombu virtual.QoS._delivered", f"{RUNTIME}.redis_transport",
     lambda k: hasattr(k.channel.qos._delivered, "clear") and "self._delivered" in source(virtual.QoS.restore_unacked)),
    ("kombu redis.QoS._vrestore_count", f"{RUNTIME}.redis_transport",
     lambda k: k.channel.qos._vrestore_count == 0),
    ("kombu redis.Channel._restore(message, leftmost)", f"{RUNTIME}.redis_transport",
     lambda k: params(kombu_redis.Channel._restore) == ["self", "message", "leftmost"]
     and "self._restore(message, leftmost=True)" in source(kombu_redis.Channel._restore_at_beginning)),
    ("kombu redis.Channel.conn_or_acquire(client)", f"{RUNTIME}.redis_transport",
     lambda k: params(kombu_redis.Channel.conn_or_acquire) == ["self", "client"]),
    ("kombu redis.Channel._create_client", f"{RUNTIME}.redis_transport",
     lambda k: isinstance(k.channel._create_client(), redis.Redis)),
    ("kombu virtual.Channel._lookup(exchange, routing_key)", f"{RUNTIME}.redis_transport",
     lambda k: k.channel._lookup("", "q") == ["q"]),
    ("kombu virtual.Channel._get_message_priority(payload, reverse)", f"{RUNTIME}.redis_transport",
     lambda k: k.channel._get_message_priority({"properties": {}}, reverse=False) == 0),
    ("kombu redis.Channel._q_for_pri(queue, priority)", f"{RUNTIME}.redis_transport",
     lambda k: k.channel._q_for_pri("q", 0) == "q"),
    ("kombu redis.Mutex and MutexHeld", f"{RUNTIME}.redis_transport",
     lambda k: params(kombu_redis.Mutex) == ["client", "name", "expire"]
     and issubclass(kombu_redis.MutexHeld, Exception)),
    ("kombu redis.QoS.unacked_index_key, unacked_mutex_key, unacked_mutex_expire", f"{RUNTIME}.redis_transport",
     lambda k: all(hasattr(k.channel.qos, name) for name in ("unacked_index_key", "unacked_mutex_key",
                                                             "unacked_mutex_expire", "visibility_timeout"))),
    ("kombu redis transport options unacked_restore_interval and unacked_restore_throttle", "llmq.worker.celery_app",
     lambda k: {"unacked_restore_interval", "unacked_restore_throttle"}
     <= set(kombu_redis.Channel.from_transport_options)),
    ("kombu's cycle calls QoS.restore_visible(num=..., interval=...)", f"{RUNTIME}.redis_transport",
     lambda k: "restore_visible(num=channel.unacked_restore_limit,interval=channel.unacked_restore_throttle,"
     in "".join(source(kombu_redis.MultiChannelPoller.on_poll_init).split())),
    # kombu, for redis_transport's TAKE: it replaces how a channel sends and reads its BRPOP
    ("kombu redis.Channel._brpop_start(timeout): queues from _queue_cycle.consume, _in_poll, _brpop_sent_at",
     f"{RUNTIME}.redis_transport",
     lambda k: params(kombu_redis.Channel._brpop_start) == ["self", "timeout"]
     and all(text in source(kombu_redis.Channel._brpop_start) for text in (
         "self._queue_cycle.consume(len(self.active_queues))", "self._in_poll = self.client.connection",
         "self._brpop_sent_at = monotonic()", "self.global_keyprefix"))),
    ("kombu redis.Channel._brpop_read: parse_response, _queue_cycle.rotate, connection._deliver, "
     "_flush_brpop_reauth", f"{RUNTIME}.redis_transport",
     lambda k: all(text in source(kombu_redis.Channel._brpop_read) for text in (
         "self.client.parse_response(", "self._queue_cycle.rotate(dest)", "self.connection._deliver(",
         "self._in_poll = None", "self._flush_brpop_reauth()"))),
    ("kombu virtual.QoS.can_consume_max_estimate()", f"{RUNTIME}.redis_transport",
     lambda k: params(virtual.QoS.can_consume_max_estimate) == ["self"]),
    # Copies: each digest is of the kombu 5.7.0 original llmq's version was written against.
    ("kombu redis.QoS.restore_visible (copied as QoS.restore_visible)", f"{RUNTIME}.redis_transport",
     lambda k: digest(kombu_redis.QoS.restore_visible) == "d4a4a40a3eaf9f23"),
    ("kombu redis.QoS.restore_unacked (copied as QoS.restore_unacked)", f"{RUNTIME}.redis_transport",
     lambda k: digest(kombu_redis.QoS.restore_unacked) == "8954efef014d546e"),
    ("kombu redis.Channel._do_restore_message (copied as Channel.restore_queues)", f"{RUNTIME}.redis_transport",
     lambda k: digest(kombu_redis.Channel._do_restore_message) == "8b430df94e45b5b0"),
    # kombu, for hub_flush
    ("kombu Hub.call_soon wakes the hub from another thread", f"{RUNTIME}.hub_flush",
     lambda k: hub_wakes_from_another_thread()),
    # Celery, for consumer
    ("celery Consumer.on_send_event_buffered, handed to the dispatcher by the Events step", f"{RUNTIME}.consumer",
     lambda k: callable(Consumer.on_send_event_buffered)
     and "on_send_buffered=c.on_send_event_buffered" in source(Events.start)),
    ("celery Consumer.event_dispatcher, set by the Events step", f"{RUNTIME}.consumer",
     lambda k: "c.event_dispatcher = " in source(Events.start)),
    ("celery Consumer._flush_events", f"{RUNTIME}.consumer",
     lambda k: optional_after_self(Consumer._flush_events)
     and "event_dispatcher.flush()" in source(Consumer._flush_events)),
    ("celery EventDispatcher.buffer_limit and on_send_buffered", f"{RUNTIME}.consumer",
     lambda k: "buffer_limit" in params(EventDispatcher.__init__)
     and "self.buffer_limit" in source(EventDispatcher.send)
     and "self.on_send_buffered()" in source(EventDispatcher.send)),
    # Celery, for asyncio_pool
    ("celery BasePool._get_info", f"{RUNTIME}.asyncio_pool",
     lambda k: BasePool(limit=3)._get_info().get("max-concurrency") == 3),
    ("celery concurrency.base.apply_target(target, args, kwargs, callback, accept_callback)", f"{RUNTIME}.asyncio_pool",
     lambda k: params(apply_target)[:5] == ["target", "args", "kwargs", "callback", "accept_callback"]),
    ("celery BasePool.body_can_be_buffer and signal_safe", f"{RUNTIME}.asyncio_pool",
     lambda k: hasattr(BasePool, "body_can_be_buffer") and hasattr(BasePool, "signal_safe")),
    # httpx2, for asyncio_network
    ("httpx2 AsyncHTTPTransport._pool", f"{RUNTIME}.asyncio_network",
     lambda k: isinstance(httpx2.AsyncHTTPTransport()._pool, httpcore2.AsyncConnectionPool)
     and "self._pool.handle_async_request(" in source(httpx2.AsyncHTTPTransport.handle_async_request)),
    ("httpcore2 AsyncConnectionPool(network_backend=...)", f"{RUNTIME}.asyncio_network",
     lambda k: "network_backend" in params(httpcore2.AsyncConnectionPool.__init__)),
    # redis-py, for held_connection
    ("redis ConnectionPool.get_connection() without a command name", f"{RUNTIME}.held_connection",
     lambda k: optional_after_self(redis.ConnectionPool.get_connection)),
    ("redis Connection.send_command and read_response", f"{RUNTIME}.held_connection",
     lambda k: callable(redis.Connection.send_command) and optional_after_self(redis.Connection.read_response)),
    # Outside the runtime package: uvicorn, for llmq.api.head_limit
    ("uvicorn HttpToolsProtocol.data_received answers a parser error with send_400_response(msg)",
     "llmq.api.head_limit",
     lambda k: "except httptools.HttpParserError:" in source(HttpToolsProtocol.data_received)
     and "self.send_400_response(msg)" in source(HttpToolsProtocol.data_received)
     and params(HttpToolsProtocol.send_400_response) == ["self", "msg"]
     and issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError)),
    ("uvicorn HttpToolsProtocol.on_message_begin sets url and headers; on_headers_complete starts the request",
     "llmq.api.head_limit",
     lambda k: params(HttpToolsProtocol.on_message_begin) == ["self"]
     and all(text in source(HttpToolsProtocol.on_message_begin) for text in ('self.url = b""', "self.headers = []"))
     and "self.url += url" in source(HttpToolsProtocol.on_url)
     and "self.headers.append((name, value))" in source(HttpToolsProtocol.on_header)
     and params(HttpToolsProtocol.on_headers_complete) == ["self"]
     and "self._start_asgi_task(" in source(HttpToolsProtocol.on_headers_complete)),
    ("uvicorn HttpToolsProtocol.send_400_response writes server_state.default_headers", "llmq.api.head_limit",
     lambda k: "self.server_state.default_headers" in source(HttpToolsProtocol.send_400_response)),
    # Outside the runtime package: redis-py, hiredis and logging
    ("redis.asyncio Connection.send_command packs through pack_command", "llmq.worker.runtime.loop_redis",
     lambda k: "self.pack_command(*args)" in source(redis.asyncio.Connection.send_command)
     and "self.pack_command(*cmd)" in source(redis.asyncio.Connection.pack_commands)),
    ("hiredis.pack_command", "llmq.worker.runtime.loop_redis",
     lambda k: hiredis.pack_command(("SET", "k", "v")) == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n"),
    ("logging._srcfile", "llmq.worker.observability.logs",
     lambda k: hasattr(logging, "_srcfile") and "_srcfile" in source(logging.Logger._log)),
]


@pytest.mark.parametrize(("name", "module", "check"), CASES, ids=[case[0] for case in CASES])
def test_private_name_is_as_llmq_uses_it(name: str, module: str, check: Callable[[Kombu], bool], kombu: Kombu) -> None:
    try:
        ok = check(kombu)
    except Exception as err:
        pytest.fail(f"{name}, which {module} relies on, is gone or changed ({type(err).__name__}: {err}); "
                    f"see the manifest in worker/runtime/__init__.py", pytrace=False)
    assert ok, (f"{name}, which {module} relies on, changed in this version: read the library's new code, "
                f"adapt {module}, then this check; see the manifest in worker/runtime/__init__.py")


def test_every_runtime_module_is_in_the_manifest() -> None:
    """A new module in worker/runtime/ gets its entry, naming what it relies on."""
    modules = {path.stem for path in Path(inspect.getfile(runtime)).parent.glob("*.py")} - {"__init__"}
    assert {module for module in modules if f"`{module}`" not in (runtime.__doc__ or "")} == set()
