"""Bad configuration stops start-up with one line naming the variable."""

from __future__ import annotations

import pytest

from llmq.worker.settings import ConfigError, load_settings

GOOD = {"LLMQ_SECRET": "a-long-random-server-secret", "LLMQ_UPSTREAM_TEST_URL": "http://proxy.test/openai-compatible/v1"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    for name in list(os.environ):
        if name.startswith(("LLMQ_", "TAL_MLOPS_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TAL_MLOPS_APP_KEY": "no-colon"}, "TAL_MLOPS_APP_KEY must be 'appID:appKey'"),
        ({"TAL_MLOPS_APP_KEY": "id:"}, "TAL_MLOPS_APP_KEY must be 'appID:appKey'"),
        ({"TAL_MLOPS_APP_ID": "1234"}, "TAL_MLOPS_APP_KEY is missing"),
        ({"TAL_MLOPS_APP_ID": "12:34", "TAL_MLOPS_APP_KEY": "abc"}, "TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY"),
        ({"LLMQ_UPSTREAM_TEST_URL": "proxy.test/v1"}, "LLMQ_UPSTREAM_TEST_URL: must be an http(s) URL"),
        ({"LLMQ_UPSTREAM_PROD_URL": "ftp://proxy/v1"}, "LLMQ_UPSTREAM_PROD_URL: must be an http(s) URL"),
        ({"LLMQ_SECRET": ""}, "LLMQ_SECRET is missing"),
        ({"LLMQ_SECRET": "short"}, "LLMQ_SECRET must be a random string"),
        ({"LLMQ_WEBHOOK_SECRET": "abc"}, "LLMQ_WEBHOOK_SECRET: webhook secret must be 'whsec_'"),
        ({"LLMQ_WEBHOOK_SCHEDULE_S": "0,-5"}, "LLMQ_WEBHOOK_SCHEDULE_S: "),
        ({"LLMQ_CALLBACK_ALLOW": "not a host!"}, "LLMQ_CALLBACK_ALLOW: "),
        ({"LLMQ_SECRET": "changeme"}, "LLMQ_SECRET must be a random string"),
        ({"LLMQ_READ_TIMEOUT_S": "0"}, "LLMQ_READ_TIMEOUT_S: Input should be greater than 0"),
        ({"LLMQ_VISIBILITY_TIMEOUT_S": "60"}, "LLMQ_VISIBILITY_TIMEOUT_S (60) must exceed"),
        ({"LLMQ_DEFAULT_MAX_ATTEMPTS": "20"}, "LLMQ_DEFAULT_MAX_ATTEMPTS must not exceed"),
        ({"LLMQ_WORKER_POOL": "prefork"}, "LLMQ_WORKER_POOL: Input should be 'asyncio' or 'threads'"),
        ({"LLMQ_FILES_S3_URL": "bucket/prefix"}, "LLMQ_FILES_S3_URL: must look like s3://BUCKET/PREFIX"),
        ({"LLMQ_FILES_S3_URL": "s3:///prefix"}, "LLMQ_FILES_S3_URL: must look like s3://BUCKET/PREFIX"),
        ({"LLMQ_FILES_S3_ENDPOINT_URL": "127.0.0.1:9000"}, "LLMQ_FILES_S3_ENDPOINT_URL: must be an http(s) URL"),
        ({"LLMQ_FILES_S3_ACCESS_KEY_ID": "id"}, "set both LLMQ_FILES_S3_ACCESS_KEY_ID and"),
        ({"LLMQ_FILES_S3_PART_BYTES": "1048576"}, "LLMQ_FILES_S3_PART_BYTES: Input should be greater than or equal"),
        ({"LLMQ_SECRET_PREVIOUS": "an-old-long-secret-value,short"}, "LLMQ_SECRET_PREVIOUS: each secret must be 16+"),
        ({"TAL_MLOPS_APP_KEY": "1234:" + "k" * 300}, "this one is 305 characters long; the limit is 256"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in {**GOOD, **env}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    text = str(raised.value)
    assert message in text
    assert "\n" not in text


def test_missing_secret_outside_dev_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="LLMQ_SECRET is missing"):
        load_settings()
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    assert load_settings().server_secret


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"TAL_MLOPS_APP_KEY": "1234:abc"}, "1234:abc"),
        ({"TAL_MLOPS_APP_ID": "1234", "TAL_MLOPS_APP_KEY": "abc"}, "1234:abc"),
        ({}, None),
    ],
)
def test_service_key_read_both_ways_the_guide_shows(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], key: str | None
) -> None:
    for name, value in {**GOOD, **env}.items():
        monkeypatch.setenv(name, value)
    assert load_settings().service_key == key


def test_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("LLMQ_SECRET=from-the-dotenv-file-123\nLLMQ_RESULT_TTL_S=600\n")
    settings = load_settings()
    assert settings.server_secret == "from-the-dotenv-file-123"
    assert settings.result_ttl_s == 600
    assert settings.effective_broker_url == settings.redis_url


def test_file_store_follows_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from llmq.worker.files.directory import DirectoryBackend
    from llmq.worker.files.s3 import S3Backend
    from llmq.worker.files.store import open_store

    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LLMQ_FILES_DIR", str(tmp_path / "files"))
    backend = open_store(load_settings()).backend
    assert isinstance(backend, DirectoryBackend) and backend.root == tmp_path / "files"
    monkeypatch.setenv("LLMQ_FILES_S3_URL", "s3://llmq-files/prod/files/")
    backend = open_store(load_settings()).backend
    assert isinstance(backend, S3Backend) and (backend.bucket, backend.prefix) == ("llmq-files", "prod/files/")
def test_previous_secrets_are_read_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)
    assert load_settings().previous_secrets == ()
    monkeypatch.setenv("LLMQ_SECRET_PREVIOUS", " the-last-secret-we-had , an-even-older-secret,")
    assert load_settings().previous_secrets == ("the-last-secret-we-had", "an-even-older-secret")
