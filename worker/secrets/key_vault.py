"""Callers' platform keys at rest: encrypted for the worker, fingerprinted for ownership.

The composite key `appID:appKey` never reaches Redis, the broker, Flower or a log in
plaintext. A job stores the key encrypted with Fernet under a key derived from the
server secret, and an HMAC fingerprint of it (the job's owner) that routes compare
without ever decrypting.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
from collections.abc import Callable

from cryptography.fernet import Fernet, InvalidToken

from llmq.worker.secrets.platform_key import app_id_of

# Callers whose key's token (in the API) or whose key (in a worker) is kept at hand; beyond this many, the
# oldest is dropped.
TOKEN_CACHE_SIZE = 4096


class KeyVault:
    def __init__(self, server_secret: str) -> None:
        secret = server_secret.encode()
        fernet_key = hashlib.sha256(b"llmq/fernet/" + secret).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(fernet_key))
        self._owner_key = hashlib.sha256(b"llmq/owner/" + secret).digest()
        self._tokens: dict[str, str] = {}
        self._keys: dict[str, str] = {}

    def encrypt(self, composite_key: str) -> str:
        return self._fernet.encrypt(composite_key.encode()).decode()

    def key_token(self, composite_key: str, owner: str) -> str:
        """The caller's key encrypted for its jobs, reused across a caller's submissions.

        Fernet costs about as much as the rest of a submission's own work. One token per key
        tells a reader of Redis only that jobs share a key, which their `owner` field says
        already. The cache is keyed by that fingerprint, so no plaintext key is held in it."""
        return _cached(self._tokens, owner, lambda: self.encrypt(composite_key))

    def decrypt(self, token: str) -> str:
        """The plaintext key; raises `InvalidToken` if the server secret changed.

        A caller's jobs share one token, so a worker decrypts it once (Fernet's HMAC check and AES were 4 % of
        a worker's CPU) and keeps the key in memory, where every call of that caller needs it anyway."""
        return _cached(self._keys, token, lambda: self._fernet.decrypt(token.encode()).decode())

    def owner(self, composite_key: str) -> str:
        """A stable, non-reversible id for whoever holds this key."""
        return hmac.new(self._owner_key, composite_key.encode(), hashlib.sha256).hexdigest()[:32]


def _cached(cache: dict[str, str], name: str, make: Callable[[], str]) -> str:
    value = cache.get(name)
    if value is None:
        if len(cache) >= TOKEN_CACHE_SIZE:
            del cache[next(iter(cache))]
        value = cache[name] = make()
    return value


@functools.lru_cache(maxsize=4)
def vault_for(server_secret: str) -> KeyVault:
    return KeyVault(server_secret)


__all__ = ["InvalidToken", "KeyVault", "app_id_of", "vault_for"]
