"""Redis commands on a connection the calling thread keeps, for the worker's few commands per job.

redis-py 8 wraps every `execute_command` in bookkeeping: taking a connection from the pool and
giving it back (each with a deprecated-argument check and connection-count hooks), a retry
closure, an operation-duration hook. On the build machine that cost 55 µs of CPU per command,
more than sending the command and reading its reply (40 µs), and a worker runs four of them per
job (the claim and transition scripts, the delivery's `ZADD`, the acknowledgement's `ZREM`), each
on one long-lived thread: the event loop's or Celery's consumer's.

Such a thread keeps one of the pool's connections and talks on it through redis-py's own
`Connection` (packing, reply parsing, health checks, error mapping), as kombu does for its
`BRPOP`. On a connection or timeout error the command goes once more through the client's
`execute_command`, with its retries, so failures behave as before. Only the first few threads
to ask keep a connection, so a thread pool of hundreds cannot drain the client's pool.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

# Threads that may keep a connection: the event loop, Celery's consumer, the sweeper, and one to spare.
MAX_HELD = 4


class HeldConnections:
    def __init__(self, client: redis.Redis, max_held: int = MAX_HELD) -> None:
        self.client = client
        self._max_held = max_held
        self._lock = threading.Lock()
        self._local = threading.local()
        self._held = 0
        self._pid = os.getpid()

    def execute(self, *args: Any) -> Any:
        """The command's reply as Redis sent it (decoded as the client decodes; no response callbacks)."""
        conn = self._connection()
        if conn is None:
            return self.client.execute_command(*args)
        try:
            conn.send_command(*args)
            return conn.read_response()
        except (redis.ConnectionError, redis.TimeoutError):
            # redis-py has already dropped the socket; the client's own path reconnects and retries.
            return self.client.execute_command(*args)

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._pid == os.getpid():
            return conn
        if getattr(self._local, "refused", False):
            return None
        with self._lock:
            if self._pid != os.getpid():  # a forked child must not share its parent's sockets
                self._pid, self._held = os.getpid(), 0
            if self._held >= self._max_held:
                self._local.refused = True
                return None
            self._held += 1
        conn = self._local.conn = self.client.connection_pool.get_connection()
        return conn
