"""The vault's reusable key tokens: one per caller, each opens to its own key, no plaintext held."""

from __future__ import annotations

import pytest
from cryptography.fernet import InvalidToken

from llmq.worker.secrets import key_vault
from llmq.worker.secrets.key_vault import KeyVault


def test_a_callers_token_is_reused_and_opens_to_its_key() -> None:
    vault = KeyVault("server-secret")
    alice, bob = "app1:key-alice", "app2:key-bob"
    token = vault.key_token(alice, vault.owner(alice))
    assert vault.key_token(alice, vault.owner(alice)) == token
    assert vault.decrypt(token) == alice
    other = vault.key_token(bob, vault.owner(bob))
    assert other != token and vault.decrypt(other) == bob
    assert all(alice not in part and bob not in part for pair in vault._tokens.items() for part in pair)


def test_the_token_cache_stays_bounded() -> None:
    vault = KeyVault("server-secret")
    key_vault_size = key_vault.TOKEN_CACHE_SIZE
    for i in range(key_vault_size + 50):
        key = f"app{i}:secret{i}"
        vault.key_token(key, vault.owner(key))
    assert len(vault._tokens) == key_vault_size
    newest = f"app{key_vault_size + 49}:secret{key_vault_size + 49}"
    assert vault.decrypt(vault._tokens[vault.owner(newest)]) == newest


def test_a_worker_decrypts_a_token_once_and_another_secret_still_cannot() -> None:
    vault = KeyVault("server-secret")
    key = "app1:key-alice"
    token = vault.key_token(key, vault.owner(key))
    assert vault.decrypt(token) == key
    vault._fernet = None  # type: ignore[assignment]  # any second decryption would now raise
    assert vault.decrypt(token) == key
    with pytest.raises(InvalidToken):
        KeyVault("another-secret").decrypt(token)


def test_the_decrypted_key_cache_stays_bounded() -> None:
    vault = KeyVault("server-secret")
    tokens = [vault.encrypt(f"app{i}:secret{i}") for i in range(key_vault.TOKEN_CACHE_SIZE + 10)]
    for token in tokens:
        vault.decrypt(token)
    assert len(vault._keys) == key_vault.TOKEN_CACHE_SIZE
    assert tokens[0] not in vault._keys and vault._keys[tokens[-1]] == f"app{len(tokens) - 1}:secret{len(tokens) - 1}"
