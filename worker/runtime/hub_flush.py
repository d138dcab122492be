"""A flush that runs on kombu's hub a moment after work piles up, asked for from any thread.

The worker batches what it sends to Redis from Celery's consumer thread (task events,
acknowledgements): whoever adds to a batch asks for a flush, and the hub runs it after a
short delay, once for everything added meanwhile. Only the first request after a flush
hands anything to the hub (`call_soon`, the one way in from another thread); the rest
return at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from time import monotonic
from typing import Any

# A flush lost with the hub's timers (a reconnect resets them) is asked for again once this overdue.
STALE_FLUSH_S = 1.0


class HubFlush:
    def __init__(self, flush: Callable[[], None], delay_s: float) -> None:
        self._flush = flush
        self.delay_s = delay_s
        self._lock = threading.Lock()
        self._due_at: float | None = None

    def request(self, hub: Any) -> None:
        """Have `flush` run on `hub` within `delay_s`; safe from any thread."""
        now = monotonic()
        with self._lock:
            if self._due_at is not None and now < self._due_at + STALE_FLUSH_S:
                return
            self._due_at = now + self.delay_s
        hub.call_soon(self._schedule, hub)

    def _schedule(self, hub: Any) -> None:
        hub.call_later(self.delay_s, self._run)

    def _run(self) -> None:
        # Cleared before flushing: what is added while the flush runs asks for the next one.
        with self._lock:
            self._due_at = None
        self._flush()
