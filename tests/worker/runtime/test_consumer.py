"""The worker's consumer: every event dispatcher Celery hands it buffers up to EVENT_BUFFER_LIMIT events."""

from __future__ import annotations

from celery.events.dispatcher import EventDispatcher

from llmq.worker.runtime.consumer import EVENT_BUFFER_LIMIT, Consumer


def test_each_new_dispatcher_gets_the_larger_buffer() -> None:
    consumer = Consumer.__new__(Consumer)  # the property alone; a real consumer needs a broker
    assert consumer.event_dispatcher is None
    for _ in range(2):  # Celery makes a new dispatcher on every (re)connect
        dispatcher = EventDispatcher(connection=None, enabled=False)
        assert dispatcher.buffer_limit < EVENT_BUFFER_LIMIT
        consumer.event_dispatcher = dispatcher
        assert consumer.event_dispatcher is dispatcher
        assert dispatcher.buffer_limit == EVENT_BUFFER_LIMIT
    consumer.event_dispatcher = None  # Celery's Events step clears it on close
    assert consumer.event_dispatcher is None
