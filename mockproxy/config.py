"""The complete mock configuration: fault settings plus the optional key and model allow-lists."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from llmq.mockproxy.faults import ConfigError, FaultConfig

ENV_PREFIX = "LLMQ_MOCK_"


@dataclass(slots=True)
class MockConfig:
    faults: FaultConfig = field(default_factory=FaultConfig)
    # None (or empty) means "accept anything well-formed".
    accept_keys: frozenset[str] | None = None
    models: frozenset[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.faults.as_dict(),
            # The accepted keys are secrets, so only their number is shown.
            "accept_keys_count": len(self.accept_keys or ()),
            "models": sorted(self.models) if self.models else None,
        }

    def update(self, changes: Mapping[str, Any]) -> None:
        """Partial update; validates everything before changing anything."""
        changes = dict(changes)
        accept_keys, models = self.accept_keys, self.models
        if "accept_keys" in changes:
            accept_keys = _string_set(changes.pop("accept_keys"), "accept_keys")
        if "models" in changes:
            models = _string_set(changes.pop("models"), "models")
        self.faults = self.faults.updated(changes)
        self.accept_keys, self.models = accept_keys, models


def _string_set(value: object, name: str) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of strings or null")
    return frozenset(value) or None


def split_list(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def fault_values_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, Any]:
    """Fault settings given as LLMQ_MOCK_<NAME> variables, converted to their field types."""
    values: dict[str, Any] = {}
    for f in fields(FaultConfig):
        raw = environ.get(ENV_PREFIX + f.name.upper())
        if raw is None or raw.strip() == "":
            continue
        try:
            values[f.name] = int(raw) if f.name == "seed" else float(raw)
        except ValueError as exc:
            raise ConfigError(f"{ENV_PREFIX}{f.name.upper()} must be a number, got {raw!r}") from exc
    return values
