"""What a worker's TAKE needs for fair turns between app ids (docs/fairness.md): weights and the quantum."""

from __future__ import annotations

from dataclasses import dataclass

from llmq.worker import redis_keys
from llmq.worker.proxy.flow_control import LimitTable
from llmq.worker.settings import get_settings

# Messages an app gives at most per turn when another app waits: fewer is finer, more is fewer commands per job.
QUANTUM = 4


@dataclass(frozen=True)
class FairTurns:
    """Weights by app id as the ready lists name it (`redis_keys.name_part`), and for any app id not listed."""

    weights: tuple[tuple[str, int], ...] = ()
    default_weight: int = 1

    def take_args(self, call_queues: list[str]) -> list[str | int]:
        """TAKE's arguments from the quantum to the fair queues (`redis_transport.TAKE`)."""
        args: list[str | int] = [QUANTUM, self.default_weight, len(self.weights)]
        for app, weight in self.weights:
            args += [app, weight]
        return [*args, len(call_queues), *call_queues]


def worker_fair_turns() -> FairTurns | None:
    """This worker's fair turns, or None when they are off."""
    settings = get_settings()
    if not settings.fair_turns:
        return None
    table = LimitTable.parse(settings.app_weights)
    named = tuple((redis_keys.name_part(app_id), weight) for app_id, weight in table.named)
    return FairTurns(named, table.default or 1)


NO_FAIR_TURNS: list[str | int] = [QUANTUM, 1, 0, 0]
"""TAKE's arguments without fair turns: no weights, no fair queues."""
