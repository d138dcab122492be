"""A flush asked for from any thread runs once on kombu's hub for everything asked meanwhile, and outlives lost
timers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from kombu.asynchronous import Hub

from llmq.worker.runtime.hub_flush import STALE_FLUSH_S, HubFlush


def run_hub_until(
    hub: Hub, done: Callable[[], bool], timeout_s: float, between: Callable[[], None] = lambda: None
) -> None:
    """Turns the hub's loop until `done`, calling `between` after each turn; bounded by `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        hub.run_once()
        between()


def test_requests_from_other_threads_meanwhile_share_one_flush() -> None:
    runs: list[float] = []
    flush = HubFlush(lambda: runs.append(time.monotonic()), delay_s=0.05)
    hub = Hub()
    asked_at = time.monotonic()
    senders = [threading.Thread(target=lambda: [flush.request(hub) for _ in range(50)]) for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(5)
    run_hub_until(hub, lambda: bool(runs), 5)
    assert len(runs) == 1 and runs[0] - asked_at >= 0.05
    flush.request(hub)  # the next request after a flush starts the next batch
    run_hub_until(hub, lambda: len(runs) == 2, 5)
    assert len(runs) == 2
    hub.close()


def test_a_flush_lost_with_the_hubs_timers_is_asked_for_again() -> None:
    runs: list[float] = []
    flush = HubFlush(lambda: runs.append(time.monotonic()), delay_s=0.05)
    lost = Hub()
    flush.request(lost)  # scheduled on a hub that never runs, as a reconnect drops the timers
    lost.close()
    hub = Hub()
    asked_at = time.monotonic()
    # Until the lost flush is overdue by STALE_FLUSH_S, a request trusts it; then one is scheduled here.
    run_hub_until(hub, lambda: bool(runs), 5, between=lambda: flush.request(hub))
    assert len(runs) == 1 and runs[0] - asked_at >= STALE_FLUSH_S
    hub.close()
