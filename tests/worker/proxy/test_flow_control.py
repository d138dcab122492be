"""Flow control's Lua logic on a real Redis (db 9 of the test's private server), with explicit clocks."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.job_runner import flow_control_for
from llmq.worker.proxy.flow_control import (
    CONCURRENCY_RECHECK_S,
    MIN_WAIT_S,
    FlowControl,
    FlowLimits,
    Grant,
    LimitTable,
    Wait,
)
from llmq.worker.settings import ConfigError, load_settings

LEASE_S = 10.0


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/9", decode_responses=True)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


def flow(client: redis.Redis, **tables: str | bool) -> FlowControl:
    limits = FlowLimits(**{
        name: value if isinstance(value, bool) else LimitTable.parse(value) for name, value in tables.items()
    })
    return FlowControl(client, limits, LEASE_S)


def test_concurrency_grants_up_to_the_limit_then_denies(client: redis.Redis) -> None:
    fc = flow(client, model_concurrency="m=2")
    first, second = fc.acquire("m", "app", now_ms=0), fc.acquire("m", "app", now_ms=1)
    assert isinstance(first, Grant) and isinstance(second, Grant)
    denied = fc.acquire("m", "app", now_ms=2)
    assert denied == Wait("concurrency", "model", 0)
    assert client.zcard(redis_keys.flow("concurrency", "model", "m")) == 2
    # Another model is not limited by this one, and an unlisted model by nothing.
    assert fc.acquire("other", "app", now_ms=3) == Grant()


def test_release_frees_a_slot(client: redis.Redis) -> None:
    fc = flow(client, model_concurrency="m=1")
    grant = fc.acquire("m", "app", now_ms=0)
    assert isinstance(grant, Grant)
    assert isinstance(fc.acquire("m", "app", now_ms=1), Wait)
    fc.release(grant)
    assert isinstance(fc.acquire("m", "app", now_ms=2), Grant)


def test_holders_whose_lease_ran_out_are_reclaimed(client: redis.Redis) -> None:
    fc = flow(client, app_concurrency="*=2")
    assert isinstance(fc.acquire("m", "a1", now_ms=0), Grant)
    assert isinstance(fc.acquire("m", "a1", now_ms=100), Grant)
    assert isinstance(fc.acquire("m", "a1", now_ms=LEASE_S * 1000 - 1), Wait)
    # The first holder never released (its worker crashed): its lease ends at LEASE_S.
    assert isinstance(fc.acquire("m", "a1", now_ms=LEASE_S * 1000 + 1), Grant)
    assert client.zcard(redis_keys.flow("concurrency", "app", "a1")) == 2
    # The set expires with its last lease, so an idle limit leaves nothing behind.
    assert 0 < client.pttl(redis_keys.flow("concurrency", "app", "a1")) <= LEASE_S * 1000


def test_gcra_allows_the_first_request_then_spaces_them(client: redis.Redis) -> None:
    fc = flow(client, model_rpm="m=60")  # one per second
    t0 = int(time.time() * 1000)
    assert isinstance(fc.acquire("m", "a", now_ms=t0), Grant)
    assert fc.acquire("m", "a", now_ms=t0 + 10) == Wait("rpm", "model", 0.99)
    assert fc.acquire("m", "a", now_ms=t0 + 400) == Wait("rpm", "model", 0.6)
    assert isinstance(fc.acquire("m", "a", now_ms=t0 + 1000), Grant)
    assert fc.acquire("m", "a", now_ms=t0 + 1500) == Wait("rpm", "model", 0.5)
    # After a quiet spell there is no credit saved up: still one at a time.
    assert isinstance(fc.acquire("m", "a", now_ms=t0 + 9000), Grant)
    assert isinstance(fc.acquire("m", "a", now_ms=t0 + 9001), Wait)


def test_app_rpm_applies_across_models(client: redis.Redis) -> None:
    fc = flow(client, app_rpm="7788=30")
    t0 = int(time.time() * 1000)
    assert isinstance(fc.acquire("m1", "7788", now_ms=t0), Grant)
    assert fc.acquire("m2", "7788", now_ms=t0 + 500) == Wait("rpm", "app", 1.5)
    assert isinstance(fc.acquire("m2", "9911", now_ms=t0 + 500), Grant)


def test_cooldown_denies_with_the_remaining_time(client: redis.Redis) -> None:
    fc = flow(client, cooldown_on_429=True)
    assert fc.acquire("m", "a") == Grant()  # nothing to hold, nothing held
    fc.cool_down("m", "a", 2.0)
    wait = fc.acquire("m", "other-app")
    assert isinstance(wait, Wait) and (wait.limit, wait.scope) == ("cooldown", "model")
    assert 1.5 < wait.wait_s <= 2.0
    wait = fc.acquire("other-model", "a")
    assert isinstance(wait, Wait) and wait.scope == "app"
    # A shorter cooldown never cuts a longer one short.
    fc.cool_down("m", "a", 0.1)
    assert client.pttl(redis_keys.flow("cooldown", "model", "m")) > 1500
    assert isinstance(fc.acquire("other-model", "other-app"), Grant)


def test_cooldown_is_ignored_when_not_enabled(client: redis.Redis) -> None:
    fc = flow(client, model_concurrency="*=5")
    fc.cool_down("m", "a", 2.0)
    assert isinstance(fc.acquire("m", "a"), Grant)
    assert not client.exists(redis_keys.flow("cooldown", "model", "m"))


def test_a_denied_rpm_leaves_no_concurrency_slot_taken(client: redis.Redis) -> None:
    fc = flow(client, model_concurrency="m=5", model_rpm="m=60")
    t0 = int(time.time() * 1000)
    assert isinstance(fc.acquire("m", "a", now_ms=t0), Grant)
    for step in range(1, 4):
        assert isinstance(fc.acquire("m", "a", now_ms=t0 + step), Wait)
    assert client.zcard(redis_keys.flow("concurrency", "model", "m")) == 1


def test_a_denied_slot_consumes_no_rpm_cell(client: redis.Redis) -> None:
    fc = flow(client, app_concurrency="a=1", model_rpm="m=60")
    t0 = int(time.time() * 1000)
    held = fc.acquire("other", "a", now_ms=t0)
    assert isinstance(held, Grant)
    assert fc.acquire("m", "a", now_ms=t0 + 1) == Wait("concurrency", "app", 0)
    fc.release(held)
    # Had the refused call taken its RPM cell, this one would have to wait until t0 + 1001.
    assert isinstance(fc.acquire("m", "a", now_ms=t0 + 2), Grant)


def test_admit_reads_the_job_and_keeps_the_held_job_alive(client: redis.Redis) -> None:
    fc = flow(client, model_concurrency="m=1")
    partition = redis_keys.app_unfinished("7788")
    for job_id in ("j1", "j2"):
        client.hset(redis_keys.job(job_id), mapping={"model": "m", "app_id": "7788", "status": "queued",
                                                     "quota_set": partition})
        client.zadd(partition, {job_id: 1.0})
    grant = fc.admit("j1")
    assert isinstance(grant, Grant) and grant.slot_keys
    assert isinstance(fc.admit("j2"), Wait)
    assert client.zscore(partition, "j2") > time.time() - 60  # the sweeper leaves it alone
    assert client.zscore(partition, "j1") == 1.0
    # Finished or missing jobs need no slot: the claim will skip them.
    client.hset(redis_keys.job("j2"), "status", "succeeded")
    assert fc.admit("j2") == Grant() and fc.admit("nope") == Grant()
    assert client.zscore(partition, "nope") is None


def test_countdown_is_bounded_and_jittered() -> None:
    assert Wait("rpm", "model", 0.001).countdown_s(rand=0) == MIN_WAIT_S
    assert Wait("cooldown", "app", 60).countdown_s(max_wait_s=2.0, rand=0) == 2.0
    assert Wait("cooldown", "app", 60).countdown_s(max_wait_s=2.0, rand=1) == pytest.approx(2.4)
    assert Wait("concurrency", "model", 0).countdown_s(rand=0) == CONCURRENCY_RECHECK_S


def test_unusual_model_names_get_safe_keys() -> None:
    assert redis_keys.flow("rpm", "model", "gpt-4o") == "llmq:flow:rpm:model:gpt-4o"
    odd = redis_keys.flow("rpm", "model", "a model\nwith {braces}")
    assert odd.startswith("llmq:flow:rpm:model:#") and "\n" not in odd


# Settings -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "table"),
    [
        ("", LimitTable()),
        (None, LimitTable()),
        ("gpt-4o=20,gemini-1.5-pro=50,*=100", LimitTable((("gpt-4o", 20), ("gemini-1.5-pro", 50)), 100)),
        (" gpt-4o = 20 , ", LimitTable((("gpt-4o", 20),))),
        ("*=3", LimitTable((), 3)),
        ("org/model:v1=7", LimitTable((("org/model:v1", 7),))),
    ],
)
def test_limit_specs(spec: str | None, table: LimitTable) -> None:
    parsed = LimitTable.parse(spec)
    assert parsed == table
    assert bool(parsed) == bool(table.named or table.default)


def test_limit_lookup_falls_back_to_the_default() -> None:
    table = LimitTable.parse("gpt-4o=20,*=100")
    assert table.get("gpt-4o") == 20 and table.get("other") == 100
    assert LimitTable.parse("gpt-4o=20").get("other") is None


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LLMQ_MODEL_CONCURRENCY": "gpt-4o"}, "LLMQ_MODEL_CONCURRENCY: 'gpt-4o' is not NAME=LIMIT"),
        ({"LLMQ_APP_CONCURRENCY": "=5"}, "LLMQ_APP_CONCURRENCY: '=5' is not NAME=LIMIT"),
        ({"LLMQ_MODEL_RPM": "gpt-4o=0"}, "LLMQ_MODEL_RPM: the limit of 'gpt-4o' must be a whole number >= 1"),
        ({"LLMQ_APP_RPM": "1234=1.5"}, "LLMQ_APP_RPM: the limit of '1234' must be a whole number >= 1, got '1.5'"),
        ({"LLMQ_MODEL_RPM": "m=-1"}, "LLMQ_MODEL_RPM: the limit of 'm' must be a whole number >= 1"),
        ({"LLMQ_MODEL_RPM": "m=x"}, "LLMQ_MODEL_RPM: the limit of 'm' must be a whole number"),
        ({"LLMQ_MODEL_CONCURRENCY": "a=1,a=2"}, "LLMQ_MODEL_CONCURRENCY: 'a' is listed twice"),
        ({"LLMQ_MODEL_CONCURRENCY": "*=1,*=2"}, "LLMQ_MODEL_CONCURRENCY: '*' is listed twice"),
        ({"LLMQ_MODEL_CONCURRENCY": "my model=2"}, "LLMQ_MODEL_CONCURRENCY: 'my model=2' is not NAME=LIMIT"),
        ({"LLMQ_COOLDOWN_ON_429": "perhaps"}, "LLMQ_COOLDOWN_ON_429: Input should be a valid boolean"),
    ],
)
@pytest.mark.usefixtures("clean_env")
def test_bad_limit_settings_are_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.usefixtures("clean_env")
def test_flow_control_is_off_by_default(monkeypatch: pytest.MonkeyPatch, client: redis.Redis) -> None:
    settings = load_settings()
    assert not settings.flow_limits.enabled
    assert flow_control_for(settings, client) is None
    monkeypatch.setenv("LLMQ_MODEL_RPM", "gpt-4o=600")
    monkeypatch.setenv("LLMQ_COOLDOWN_ON_429", "true")
    settings = load_settings()
    assert settings.flow_limits == FlowLimits(model_rpm=LimitTable((("gpt-4o", 600),)), cooldown_on_429=True)
    flow_control = flow_control_for(settings, client)
    assert flow_control is not None and flow_control.max_wait_s <= settings.visibility_timeout_s / 10


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("LLMQ_", "TAL_MLOPS_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LLMQ_SECRET", "a-long-random-server-secret")
    monkeypatch.chdir(tmp_path)  # no stray .env
