"""The proxy's verdicts on keys, as the worker records them for the API's quotas (real Redis)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.proxy.key_verdicts import KNOWN_AGAIN_AFTER_S, KeyVerdicts
from llmq.worker.secrets.key_vault import KeyVault
from tests.redis_monitor import CommandLog


@pytest.fixture
def db_url(redis_server: RedisServer) -> Iterator[str]:
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


def test_an_accepted_app_id_is_told_once_per_process_then_again_after_a_while(db_url: str) -> None:
    client = redis.Redis.from_url(db_url, decode_responses=True)
    clock = [0.0]
    verdicts = KeyVerdicts(client, KeyVault("x" * 20), 600, clock=lambda: clock[0])
    with CommandLog(db_url) as log:
        for _ in range(5):
            verdicts.accepted("1234")
        clock[0] += KNOWN_AGAIN_AFTER_S
        verdicts.accepted("1234")
    assert log.commands == ["SADD", "SADD"]
    assert client.smembers(redis_keys.KNOWN_APPS) == {"1234"}
    client.close()


def test_a_rejected_key_is_stored_by_its_fingerprint_with_a_ttl(db_url: str) -> None:
    client = redis.Redis.from_url(db_url, decode_responses=True)
    vault = KeyVault("x" * 20)
    KeyVerdicts(client, vault, 600).rejected("1234:secret-app-key")
    KeyVerdicts(client, vault, 0).rejected("1234:other-key")  # 0: never refused
    assert client.keys("*") == [redis_keys.rejected_key(vault.owner("1234:secret-app-key"))]
    assert 590 < client.ttl(client.keys("*")[0]) <= 600
    client.close()
