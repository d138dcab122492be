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
from collections import OrderedDict
from collections.abc import Callable

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from llmq.worker.secrets.platform_key import app_id_of

# Callers whose key's token (in the API) or whose key (in a worker) is kept at hand; beyond this many, the
# least recently used is dropped. With keys of at most 256 characters, a full cache holds about 3 MB.
TOKEN_CACHE_SIZE = 4096


class KeyVault:
    """Encrypts with `server_secret`; decrypts and recognises owners under it and every `previous` one.

    After `LLMQ_SECRET` changes, the old value in `LLMQ_SECRET_PREVIOUS` keeps queued jobs' keys readable and
    their owners recognised, until those jobs are gone."""

    def __init__(self, server_secret: str, previous: tuple[str, ...] = ()) -> None:
        secrets = [server_secret.encode(), *(old.encode() for old in previous)]
        self._fernet = MultiFernet([
            Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"llmq/fernet/" + secret).digest()))
            for secret in secrets
        ])
        self._owner_keys = [hashlib.sha256(b"llmq/owner/" + secret).digest() for secret in secrets]
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._keys: OrderedDict[str, str] = OrderedDict()

    def encrypt(self, composite_key: str) -> str:
        return self._fernet.encrypt(composite_key.encode()).decode()

    def key_token(self, composite_key: str, owner: str) -> str:
        """The caller's key encrypted for its jobs, reused across a caller's submissions.

        Fernet costs about as much as the rest of a submission's own work. One token per key
        tells a reader of Redis only that jobs share a key, which their `owner` field says
        already. The cache is keyed by that fingerprint, so no plaintext key is held in it."""
        return _cached(self._tokens, owner, lambda: self.encrypt(composite_key))

    def decrypt(self, token: str) -> str:
        """The plaintext key; raises `InvalidToken` if it was made under none of the configured secrets.

        A caller's jobs share one token, so a worker decrypts it once (Fernet's HMAC check and AES were 4 % of
        a worker's CPU) and keeps the key in memory, where every call of that caller needs it anyway."""
        return _cached(self._keys, token, lambda: self._fernet.decrypt(token.encode()).decode())

    def owner(self, composite_key: str) -> str:
        """A stable, non-reversible id for whoever holds this key (under the current secret: new records)."""
        return _fingerprint(self._owner_keys[0], composite_key)

    def owners(self, composite_key: str) -> tuple[str, ...]:
        """The key's id under the current secret, then under each previous one: any of them owns a record."""
        return tuple(_fingerprint(owner_key, composite_key) for owner_key in self._owner_keys)


def _fingerprint(owner_key: bytes, composite_key: str) -> str:
    return hmac.new(owner_key, composite_key.encode(), hashlib.sha256).hexdigest()[:32]


def _cached(cache: OrderedDict[str, str], name: str, make: Callable[[], str]) -> str:
    value = cache.get(name)
    if value is None:
        value = cache[name] = make()
        if len(cache) > TOKEN_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(name)
    return value


@functools.lru_cache(maxsize=4)
def vault_for(server_secret: str, previous: tuple[str, ...] = ()) -> KeyVault:
    return KeyVault(server_secret, previous)


__all__ = ["InvalidToken", "KeyVault", "app_id_of", "vault_for"]
