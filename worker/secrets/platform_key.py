"""The platform key `appID:appKey`: its one format rule, shared by the service and the CLI."""

from __future__ import annotations

import re

KEY_FORMAT = "'appID:appKey' (the appID and the appKey joined by ':', e.g. 1234:abc)"
# The whole key, both halves and the colon. Real keys are far shorter; the bound keeps what a caller sends into
# every job record, cache and log line small.
MAX_KEY_CHARS = 256
_PRINTABLE_ASCII = re.compile(r"[!-~]*")


def key_problem(key: str) -> str | None:
    """What is wrong with a key, or None: at most 256 characters, two non-empty halves, one colon, printable ASCII
    with no whitespace."""
    if len(key) > MAX_KEY_CHARS:
        return f"is {len(key)} characters long; the limit is {MAX_KEY_CHARS}"
    app_id, sep, app_key = key.partition(":")
    if not sep:
        return "has no ':'"
    if not app_id.strip() or not app_key.strip():
        return "has an empty half"
    if ":" in app_key:
        return "has more than one ':'"
    if key.split() != [key]:  # str.split() cuts at every character str.isspace() names, in C
        return "contains whitespace"
    if not _PRINTABLE_ASCII.fullmatch(key):
        return "contains a character that is not printable ASCII (only '!' to '~')"
    return None


def check_composite_key(key: str) -> str:
    problem = key_problem(key)
    if problem:
        raise ValueError(f"must be {KEY_FORMAT}; this one {problem}")
    return key


def app_id_of(composite_key: str) -> str:
    """The appID half: safe to show and to label metrics with."""
    return composite_key.partition(":")[0]
