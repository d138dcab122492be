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


def test_the_caches_keep_the_most_recently_used() -> None:
    vault = KeyVault("server-secret")
    first = "app0:secret0"
    token = vault.key_token(first, vault.owner(first))
    assert vault.decrypt(token) == first
    for i in range(1, key_vault.TOKEN_CACHE_SIZE + 10):
        key = f"app{i}:secret{i}"
        vault.decrypt(vault.key_token(key, vault.owner(key)))
        # The busy caller stays at hand: the same token, never decrypted again.
        assert vault.key_token(first, vault.owner(first)) == token
        assert token in vault._keys
        vault.decrypt(token)
    assert len(vault._tokens) == len(vault._keys) == key_vault.TOKEN_CACHE_SIZE


def test_after_a_rotation_old_tokens_open_and_old_owners_still_own() -> None:
    old = KeyVault("old-server-secret")
    key = "app1:key-alice"
    old_token, old_owner = old.key_token(key, old.owner(key)), old.owner(key)
    rotated = KeyVault("new-server-secret", previous=("old-server-secret",))
    assert rotated.decrypt(old_token) == key
    assert rotated.owner(key) != old_owner  # new records get the new fingerprint...
    assert rotated.owners(key) == (rotated.owner(key), old_owner)  # ...and the old one still proves ownership
    new_token = rotated.key_token(key, rotated.owner(key))
    assert KeyVault("new-server-secret").decrypt(new_token) == key  # made with the new secret only
    with pytest.raises(InvalidToken):
        old.decrypt(new_token)
    with pytest.raises(InvalidToken):
        KeyVault("new-server-secret").decrypt(old_token)  # once the old secret is dropped, its tokens are unreadable
    assert KeyVault("x" * 20).owners(key) == (KeyVault("x" * 20).owner(key),)
