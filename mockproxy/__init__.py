"""A mock of the upstream LLM proxy, on aiohttp, for the local run, the tests and the benchmark."""

from __future__ import annotations

import importlib.util

# The extra that installs aiohttp; the service itself never needs it.
EXTRA = "mock"


def require_aiohttp(program: str) -> None:
    """Stop `program` with one line naming the extra to install when aiohttp is missing."""
    if importlib.util.find_spec("aiohttp") is None:
        raise SystemExit(f"{program}: the mock proxy needs aiohttp, which comes with llmq's '{EXTRA}' extra: "
                         f"pip install 'llmq[{EXTRA}]' (make run installs it)")
