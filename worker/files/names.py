"""Names of stored objects: made by llmq, checked before they reach a path or a key.

A caller's filename is data kept beside the object, never part of its name, so no name can climb out
of the store's directory or collide with the store's own bookkeeping (temporary files start with a dot).
"""

from __future__ import annotations

import re
import secrets

SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}"
NAME_RE = re.compile(rf"^{SEGMENT}(?:/{SEGMENT}){{0,7}}$")
MAX_NAME_CHARS = 512
FILE_ID_PREFIX = "file-"


class InvalidName(ValueError):
    """A name that is not one llmq makes: letters, digits, `_` and `-` in `/`-separated segments."""


def check_name(name: str) -> str:
    if len(name) > MAX_NAME_CHARS or not NAME_RE.match(name):
        raise InvalidName(f"not a file store name: {name[:80]!r}")
    return name


def check_prefix(prefix: str) -> str:
    """A prefix for listing: empty, or a name, optionally ending in `/`."""
    if prefix:
        check_name(prefix.removesuffix("/"))
    return prefix


def new_file_id() -> str:
    """An OpenAI-shaped file id (`file-` and 24 random characters), also usable as a store name."""
    return FILE_ID_PREFIX + secrets.token_hex(12)
