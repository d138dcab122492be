"""A bounded in-memory record of the requests the mock has answered."""

from __future__ import annotations

from collections import deque
from typing import Any

MAX_CALLS = 100_000


class CallLog:
    def __init__(self, limit: int = MAX_CALLS) -> None:
        # A bounded deque drops the oldest records, so a long benchmark cannot grow memory forever.
        self._calls: deque[dict[str, Any]] = deque(maxlen=limit)

    def record(self, *, model: str | None, app_id: str | None, stream: bool, at: float, outcome: str,
               status: int | None) -> dict[str, Any]:
        """Record a request; the entry returned gets how it `ended`: `completed`, or `aborted` by the client."""
        # Only the appID is kept: the appKey half of the credential never reaches memory or output.
        call = {
            "model": model, "app_id": app_id, "stream": stream, "at": at,
            "outcome": outcome, "status": status, "ended": None,
        }
        self._calls.append(call)
        return call

    def list(self, model: str | None = None) -> list[dict[str, Any]]:
        if model is None:
            return list(self._calls)
        return [call for call in self._calls if call["model"] == model]

    def clear(self) -> None:
        self._calls.clear()
