"""Celery's consumer, with task events sent in batches a fraction of a second apart.

Celery already buffers task events and publishes each buffer as one `task.multi` message,
which Flower and every event receiver read like single events. But it flushes on the next
turn of the worker's event loop, which under load is almost every event: about two PUBLISH
commands per job. Flushing at most every `EVENT_BATCH_S` sends one message for many jobs;
Flower shows a task that much later. A full buffer is still sent at once by the dispatcher
itself; Celery's limit of 24 events would make that every eight jobs under load, so it is
raised.
"""

from __future__ import annotations

import contextlib
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

from llmq.worker.runtime.hub_flush import HubFlush

EVENT_BATCH_S = 0.1
# Events (about 400 bytes each) one message carries at most: three per job, at 1,000 jobs/s, per batch.
EVENT_BUFFER_LIMIT = 300


class Consumer(CeleryConsumer):  # type: ignore[misc]
    _event_dispatcher: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._event_flush = HubFlush(self._flush_events, EVENT_BATCH_S)

    # Celery's Events step makes a new dispatcher on every (re)connect and sets it here.
    @property
    def event_dispatcher(self) -> Any:
        return self._event_dispatcher

    @event_dispatcher.setter
    def event_dispatcher(self, dispatcher: Any) -> None:
        if dispatcher is not None:
            dispatcher.buffer_limit = EVENT_BUFFER_LIMIT
        self._event_dispatcher = dispatcher

    def on_send_event_buffered(self) -> None:
        # Called on whichever thread sent the event.
        if self.hub:
            self._event_flush.request(self.hub)

    def shutdown(self) -> None:
        # What is still buffered (the last tasks of a warm shutdown) goes out before the dispatcher closes.
        with contextlib.suppress(Exception):
            self._flush_events()
        super().shutdown()
