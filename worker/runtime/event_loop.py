"""The worker process's one event loop, and the bridge to it from Celery's synchronous task code.

Every proxy call of a worker process runs on this loop, so hundreds of calls wait on one
thread instead of one thread each. Task code stays synchronous (Celery's tracer, retries
and acknowledgements are synchronous); where it waits for the network it calls `wait`:
under the asyncio pool (`llmq.worker.runtime.asyncio_pool`) that suspends only the task, through a
greenback portal; anywhere else (the threads pool, tests, the sweeper's thread) it blocks
the calling thread until the loop has the answer.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable
from typing import TypeVar

import greenback
import uvloop

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def get_loop() -> asyncio.AbstractEventLoop:
    """The process's event loop, running forever in a daemon thread started on first use."""
    global _loop, _thread
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = uvloop.new_event_loop()
            ready = threading.Event()
            loop.call_soon(ready.set)
            _thread = threading.Thread(target=loop.run_forever, name="llmq-event-loop", daemon=True)
            _thread.start()
            ready.wait()
            _loop = loop
        return _loop


def on_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def wait(awaitable: Awaitable[T]) -> T:
    """`await awaitable` from synchronous code, suspending as little as the caller allows."""
    if greenback.has_portal():
        return greenback.await_(awaitable)
    if on_loop_thread():
        raise RuntimeError("synchronous code on the event loop must run in a greenback portal to wait")
    if not asyncio.iscoroutine(awaitable):
        raise TypeError("only coroutines can be handed to the loop from another thread")
    return asyncio.run_coroutine_threadsafe(awaitable, get_loop()).result()

