"""The proxy's credential format: `Authorization: Bearer appID:appKey`."""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

_BEARER = re.compile(r"[Bb]earer ([^\s:]+):([^\s:]+)")

INVALID_KEY_MESSAGE = "Invalid API key: expected 'Bearer appID:appKey'"


@dataclass(frozen=True, slots=True)
class Credential:
    app_id: str
    app_key: str

    @property
    def composite(self) -> str:
        return f"{self.app_id}:{self.app_key}"


def parse_authorization(header: str | None) -> Credential | None:
    if not header:
        return None
    match = _BEARER.fullmatch(header.strip())
    return Credential(match[1], match[2]) if match else None


def authenticate(header: str | None, accept_keys: Collection[str] | None) -> Credential | None:
    """The credential if it is well-formed and (when a list is configured) one of the accepted keys."""
    credential = parse_authorization(header)
    if credential is None:
        return None
    if accept_keys and credential.composite not in accept_keys:
        return None
    return credential
