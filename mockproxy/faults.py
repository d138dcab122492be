"""Fault settings of the mock and the random choice of how to treat one request."""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

# Probabilities drawn per request, in the order the cumulative draw checks them.
RATE_FIELDS: tuple[str, ...] = (
    "fail_500_rate",
    "fail_502_rate",
    "fail_503_rate",
    "rate_limit_rate",
    "timeout_rate",
    "reset_rate",
    "garbage_rate",
    "stream_cut_rate",
)

# What a random draw means: (outcome kind, HTTP status or None).
_RATE_OUTCOMES: dict[str, tuple[str, int | None]] = {
    "fail_500_rate": ("status", 500),
    "fail_502_rate": ("status", 502),
    "fail_503_rate": ("status", 503),
    "rate_limit_rate": ("status", 429),
    "timeout_rate": ("hang", None),
    "reset_rate": ("reset", None),
    "garbage_rate": ("garbage", 200),
    "stream_cut_rate": ("stream_cut", 200),
}


class ConfigError(ValueError):
    """A fault setting has the wrong type or range."""


@dataclass(frozen=True, slots=True)
class FaultConfig:
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    fail_500_rate: float = 0.0
    fail_502_rate: float = 0.0
    fail_503_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: float = 1.0
    timeout_rate: float = 0.0
    hang_s: float = 600.0
    reset_rate: float = 0.0
    garbage_rate: float = 0.0
    stream_cut_rate: float = 0.0
    chunk_delay_ms: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "seed":
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                    raise ConfigError("seed must be an integer or null")
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{f.name} must be a number")
            if value < 0:
                raise ConfigError(f"{f.name} must be >= 0")
            if f.name in RATE_FIELDS and value > 1:
                raise ConfigError(f"{f.name} must be between 0 and 1")
        # One draw per request, so the probabilities have to fit in [0, 1].
        if sum(getattr(self, name) for name in RATE_FIELDS) > 1 + 1e-9:
            raise ConfigError("the fault rates must add up to at most 1")

    def updated(self, changes: Mapping[str, Any]) -> FaultConfig:
        unknown = set(changes) - field_names()
        if unknown:
            raise ConfigError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        # Integers from JSON are fine for float fields; normalise so the dataclass stays uniform.
        clean: dict[str, Any] = {
            k: (float(v) if k != "seed" and _is_number(v) else v) for k, v in changes.items()
        }
        return replace(self, **clean)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def field_names() -> set[str]:
    return {f.name for f in fields(FaultConfig)}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request is answered; `status` is None when no HTTP response is sent."""

    kind: str
    status: int | None = 200


OK = Outcome("ok", 200)


def choose_outcome(config: FaultConfig, rng: random.Random, *, stream: bool) -> Outcome:
    """Draw at most one fault with the configured probabilities."""
    draw = rng.random()
    cumulative = 0.0
    for name in RATE_FIELDS:
        rate: float = getattr(config, name)
        if rate <= 0.0:
            continue
        cumulative += rate
        if draw < cumulative:
            kind, status = _RATE_OUTCOMES[name]
            # A cut stream only makes sense for a streamed answer; plain requests succeed instead.
            if kind == "stream_cut" and not stream:
                return OK
            return Outcome(kind, status)
    return OK


def latency_seconds(config: FaultConfig, rng: random.Random) -> float:
    """Base latency plus a symmetric jitter, never negative."""
    delay_ms = config.latency_ms
    if config.latency_jitter_ms > 0:
        delay_ms += rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
    return max(delay_ms, 0.0) / 1000.0
