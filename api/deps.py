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
from llmq.worker.secrets.platform_key import check_composite_key
from llmq.worker.settings import Settings


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
    """Whoever presented a platform key: the key itself (for the proxy) and its owner id."""

    key: str
    owner: str

    @property
    def app_id(self) -> str:
        return app_id_of(self.key)


async def get_caller(
    request: Request,
    authorization: Annotated[
        str | None,
        Header(description="`Bearer appID:appKey`: the platform key used upstream for this job."),
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
        return Caller(settings.service_key, vault.owner(settings.service_key))
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
    return Caller(key, vault.owner(key))


CallerDep = Annotated[Caller, Depends(get_caller)]
