"""Shared dependencies of the routes, as named `Annotated` aliases.

All `async def`: they do no blocking work, and FastAPI would otherwise hop to a thread for each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from llmq.api.errors import ApiError
from llmq.api.job_store import AsyncJobStore
from llmq.api.stream_reader import StreamReader
from llmq.worker.secrets.key_vault import KeyVault, app_id_of
from llmq.worker.secrets.platform_key import MAX_KEY_CHARS, check_composite_key
from llmq.worker.settings import Settings

# "Bearer " and the key, with room for stray spaces around them.
MAX_AUTHORIZATION_CHARS = MAX_KEY_CHARS + 64


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def get_store(request: Request) -> AsyncJobStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_vault(request: Request) -> KeyVault:
    return request.app.state.vault  # type: ignore[no-any-return]


async def get_stream_reader(request: Request) -> StreamReader:
    return request.app.state.stream_reader  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[AsyncJobStore, Depends(get_store)]
VaultDep = Annotated[KeyVault, Depends(get_vault)]
StreamReaderDep = Annotated[StreamReader, Depends(get_stream_reader)]


@dataclass(frozen=True)
class Caller:
    """Whoever presented a platform key: the key itself (for the proxy) and its owner ids.

    `owners` holds the id under the current server secret (new records get it), then under each previous one,
    so a caller still owns the jobs recorded before a secret rotation."""

    key: str
    owners: tuple[str, ...]

    @property
    def owner(self) -> str:
        return self.owners[0]

    @property
    def app_id(self) -> str:
        return app_id_of(self.key)


async def get_caller(
    request: Request,
    authorization: Annotated[
        str | None,
        Header(description="`Bearer appID:appKey`: the platform key used upstream for this job (at most "
                           f"{MAX_KEY_CHARS} characters of printable ASCII)."),
    ] = None,
) -> Caller:
    return caller_of(request, authorization)


def caller_of(request: Request, authorization: str | None) -> Caller:
    """The caller behind an Authorization header (or the service key, when one is configured); 401 otherwise."""
    # Read straight from the app's state: each sub-dependency costs FastAPI some 20 µs per request.
    settings: Settings = request.app.state.settings
    vault: KeyVault = request.app.state.vault
    if authorization is None or not authorization.strip():
        if settings.service_key is None:
            raise ApiError(401, "unauthorized",
                           "Send your platform key as 'Authorization: Bearer appID:appKey'.",
                           headers={"WWW-Authenticate": "Bearer"})
        return Caller(settings.service_key, vault.owners(settings.service_key))
    if len(authorization) > MAX_AUTHORIZATION_CHARS:  # refused before any copy of it is made
        raise ApiError(401, "unauthorized",
                       f"The Authorization header is {len(authorization)} characters long; the limit is "
                       f"{MAX_KEY_CHARS} for the key: send 'Authorization: Bearer appID:appKey'.",
                       headers={"WWW-Authenticate": "Bearer"})
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    try:
        if scheme.lower() != "bearer":
            raise ValueError("must use the Bearer scheme")
        check_composite_key(key)
    except ValueError as err:
        raise ApiError(401, "unauthorized",
                       f"The Authorization header {err}: send 'Authorization: Bearer appID:appKey'.",
                       headers={"WWW-Authenticate": "Bearer"}) from None
    return Caller(key, vault.owners(key))


CallerDep = Annotated[Caller, Depends(get_caller)]
