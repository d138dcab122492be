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

from cryptography.fernet import Fernet, InvalidToken

from worker.platform_key import app_id_of


class KeyVault:
    def __init__(self, server_secret: str) -> None:
        secret = server_secret.encode()
        fernet_key = hashlib.sha256(b"llmq/fernet/" + secret).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(fernet_key))
        self._owner_key = hashlib.sha256(b"llmq/owner/" + secret).digest()

    def encrypt(self, composite_key: str) -> str:
        return self._fernet.encrypt(composite_key.encode()).decode()

    def decrypt(self, token: str) -> str:
        """The plaintext key; raises `InvalidToken` if the server secret changed."""
        return self._fernet.decrypt(token.encode()).decode()

    def owner(self, composite_key: str) -> str:
        """A stable, non-reversible id for whoever holds this key."""
        return hmac.new(self._owner_key, composite_key.encode(), hashlib.sha256).hexdigest()[:32]


@functools.lru_cache(maxsize=4)
def vault_for(server_secret: str) -> KeyVault:
    return KeyVault(server_secret)


__all__ = ["InvalidToken", "KeyVault", "app_id_of", "vault_for"]
