"""The platform key `appID:appKey`: its one format rule, shared by the service and the CLI."""

from __future__ import annotations

KEY_FORMAT = "'appID:appKey' (the appID and the appKey joined by ':', e.g. 1234:abc)"


def key_problem(key: str) -> str | None:
    """What is wrong with a key, or None: two non-empty halves, one colon, no whitespace."""
    app_id, sep, app_key = key.partition(":")
    if not sep:
        return "has no ':'"
    if not app_id.strip() or not app_key.strip():
        return "has an empty half"
    if ":" in app_key:
        return "has more than one ':'"
    if key.split() != [key]:  # str.split() cuts at every character str.isspace() names, in C
        return "contains whitespace"
    return None


def check_composite_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise ValueError(f"must be {KEY_FORMAT}; this one {problem}")
    return key


def app_id_of(composite_key: str) -> str:
    """The appID half: safe to show and to label metrics with."""
    return composite_key.partition(":")[0]
