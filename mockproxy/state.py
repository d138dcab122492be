"""Everything one running mock holds: configuration, randomness, scripts and the call log."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from llmq.mockproxy.calls import CallLog
from llmq.mockproxy.config import MockConfig
from llmq.mockproxy.scripts import ScriptBook
from llmq.mockproxy.sleeper import Sleeper


class MockState:
    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.faults.seed)
        self.scripts = ScriptBook()
        self.calls = CallLog()
        self.sleeper = Sleeper()
        self._garbage_count = 0

    def update_config(self, changes: Mapping[str, Any]) -> None:
        old_seed = self.config.faults.seed
        self.config.update(changes)
        # Setting a seed (again) restarts the random sequence, so a run can be replayed.
        if "seed" in changes or self.config.faults.seed != old_seed:
            self.rng = random.Random(self.config.faults.seed)

    def next_garbage_is_html(self) -> bool:
        """Garbage alternates between non-JSON text and a JSON object that is not a completion."""
        self._garbage_count += 1
        return self._garbage_count % 2 == 1


STATE_KEY: web.AppKey[MockState] = web.AppKey("mock_state", MockState)
