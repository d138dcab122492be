"""Scripted answers per model, so that parallel tests each get their own deterministic sequence."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

STEP_KINDS = frozenset({"ok", "status", "hang", "reset", "garbage", "stream_cut"})
_MISSING = object()


class StepError(ValueError):
    """A scripted step is malformed."""


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = _MISSING
    latency_ms: float = 0.0
    seconds: float | None = None  # a hang's length; for a cut stream, the pause before the cut
    chunks: int | None = None  # a cut stream's chunks before the cut (default: two or three)

    @property
    def has_body(self) -> bool:
        return self.body is not _MISSING


def _number(raw: dict[str, Any], name: str) -> float | None:
    value = raw.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise StepError(f"'{name}' must be a number >= 0")
    return float(value)


def parse_step(raw: object) -> Step:
    if not isinstance(raw, dict):
        raise StepError("each step must be an object")
    kind = raw.get("kind")
    if kind not in STEP_KINDS:
        raise StepError(f"'kind' must be one of {sorted(STEP_KINDS)}")
    status = raw.get("status")
    if kind == "status":
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise StepError("a 'status' step needs an integer 'status' between 100 and 599")
    elif status is not None:
        raise StepError("'status' is only allowed for kind 'status'")
    chunks = raw.get("chunks")
    if chunks is not None and (kind != "stream_cut" or isinstance(chunks, bool) or not isinstance(chunks, int)
                               or chunks < 0):
        raise StepError("'chunks' is a number >= 0, only for kind 'stream_cut'")
    headers = raw.get("headers") or {}
    if not isinstance(headers, dict):
        raise StepError("'headers' must be an object")
    return Step(
        kind=kind,
        status=status,
        headers={str(k): str(v) for k, v in headers.items()},
        body=raw.get("body", _MISSING),
        latency_ms=_number(raw, "latency_ms") or 0.0,
        seconds=_number(raw, "seconds"),
        chunks=chunks,
    )


class ScriptBook:
    """Queues of steps by model. A model stays scripted (no random faults) until it is cleared."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Step]] = {}

    def __contains__(self, model: str) -> bool:
        return model in self._queues

    def add(self, model: str, steps: list[Step]) -> int:
        queue = self._queues.setdefault(model, deque())
        queue.extend(steps)
        return len(queue)

    def next_step(self, model: str) -> Step | None:
        """The next step for `model`, or None once its script is used up (or it has none)."""
        queue = self._queues.get(model)
        return queue.popleft() if queue else None

    def clear(self, model: str | None = None) -> None:
        if model is None:
            self._queues.clear()
        else:
            self._queues.pop(model, None)

    def pending(self) -> dict[str, int]:
        return {model: len(queue) for model, queue in self._queues.items()}
