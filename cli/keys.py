"""Finding the platform key (`appID:appKey`) the way the proxy guide sets it, and keeping it out of output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmq.worker.secrets.platform_key import KEY_FORMAT, key_problem

KEY_HELP = "set LLMQ_KEY=appID:appKey, or TAL_MLOPS_APP_ID and TAL_MLOPS_APP_KEY, or pass --key appID:appKey"


@dataclass(frozen=True)
class KeyChoice:
    """The key in use and where it came from; `problem` explains a key that cannot be used."""

    key: str | None
    source: str
    problem: str | None = None

    @property
    def app_id(self) -> str:
        return (self.key or "").partition(":")[0]

    @property
    def app_key(self) -> str:
        return (self.key or "").partition(":")[2]

    def describe(self) -> str:
        """appID and the appKey's length only: the appKey itself is never shown."""
        if not self.key:
            return "no key"
        return f"appID {self.app_id}, appKey {'*' * 8} ({len(self.app_key)} characters) from {self.source}"


def format_problem(key: str) -> str | None:
    """The service's own rule (llmq.worker.secrets.platform_key), worded for a terminal."""
    problem = key_problem(key)
    return f"{problem} — it must be {KEY_FORMAT}" if problem else None


def resolve_key(flag: str | None, environ: Mapping[str, str]) -> KeyChoice:
    """--key, then LLMQ_KEY, then the guide's TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY (or the whole key in the latter)."""
    # Empty variables count as unset, as in the service's settings.
    app_id = environ.get("TAL_MLOPS_APP_ID") or None
    app_key = environ.get("TAL_MLOPS_APP_KEY") or None
    if flag:
        choice = KeyChoice(flag, "--key")
    elif environ.get("LLMQ_KEY"):
        choice = KeyChoice(environ["LLMQ_KEY"], "LLMQ_KEY")
    elif app_id and app_key:
        choice = KeyChoice(f"{app_id}:{app_key}", "TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY")
    elif app_key:
        choice = KeyChoice(app_key, "TAL_MLOPS_APP_KEY")
    elif app_id:
        return KeyChoice(None, "TAL_MLOPS_APP_ID", "TAL_MLOPS_APP_ID is set but TAL_MLOPS_APP_KEY is missing")
    else:
        return KeyChoice(None, "none")
    assert choice.key is not None
    problem = format_problem(choice.key)
    return KeyChoice(choice.key, choice.source, f"the key from {choice.source} {problem}" if problem else None)


def secrets_of(choice: KeyChoice) -> list[str]:
    """Strings that must never be printed: the appKey half, or the whole key when it has no usable halves."""
    if not choice.key:
        return []
    candidates = [choice.app_key] if choice.app_key.strip() else [choice.key]
    # Very short values would mangle ordinary text if masked; real appKeys are long.
    return [s for s in candidates if len(s) >= 6]
