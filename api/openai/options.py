"""What a call says outside its body: llmq's options in `llmq-*` headers, `Prefer` (RFC 7240), and how long
the caller means to wait.

The body belongs to the proxy, exactly as OpenAI defines it, so llmq's own options never go there: the SDK
sends them with `default_headers` or `extra_headers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmq.api.openai.errors import OpenAIError
from llmq.worker.settings import Settings

# `Prefer: wait=N` is the caller's own bound; the SDK's read timeout is its client's, so llmq answers (504,
# with the job id and `x-should-retry: false`) a little before the client would give up and send the call again.
READ_TIMEOUT_MARGIN_S = 1.0
READ_TIMEOUT_MARGIN_SHARE = 0.1


@dataclass(frozen=True)
class Preferences:
    """The preferences of RFC 7240 this route honours; others are ignored, as the RFC asks."""

    respond_async: bool = False
    wait_s: float | None = None


def parse_prefer(values: list[str] | None) -> Preferences:
    """`Prefer: respond-async, wait=10` (names case-insensitive, values maybe quoted, parameters ignored)."""
    respond_async = False
    wait_s: float | None = None
    for value in values or []:
        for item in value.split(","):
            token = item.split(";", 1)[0].strip()
            name, _, raw = token.partition("=")
            name = name.strip().lower()
            if name == "respond-async":
                respond_async = True
            elif name == "wait":
                wait_s = _seconds(raw.strip().strip('"'))
    return Preferences(respond_async, wait_s)


def _seconds(raw: str) -> float:
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise OpenAIError(400, f"Prefer: wait must be a number of seconds above 0 (got {raw!r}).",
                          code="invalid_prefer", param="Prefer")
    return seconds


def read_timeout_s(raw: str | None) -> float | None:
    """The SDK's `x-stainless-read-timeout` in seconds, or None when absent or not a usable number."""
    if raw is None:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def wait_bound_s(preferences: Preferences, client_read_timeout_s: float | None, settings: Settings) -> float:
    """How long this call waits for its job: the shortest the caller stated, else the configured bound; never
    more than `LLMQ_OPENAI_MAX_WAIT_S`."""
    stated = []
    if preferences.wait_s is not None:
        stated.append(preferences.wait_s)
    if client_read_timeout_s is not None:
        margin = min(READ_TIMEOUT_MARGIN_S, client_read_timeout_s * READ_TIMEOUT_MARGIN_SHARE)
        stated.append(client_read_timeout_s - margin)
    wait_s = min(stated) if stated else settings.openai_wait_s
    return min(wait_s, settings.openai_max_wait_s)
