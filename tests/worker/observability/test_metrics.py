"""Metric label values come from bounded sets: listed models and app ids, everything else `other`."""

from __future__ import annotations

import pytest

from llmq.worker.observability.metrics import OTHER, LabelValues, parse_names
from llmq.worker.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("spec", "names"),
    [(None, set()), ("", set()), ("gpt-4o", {"gpt-4o"}), (" gpt-4o , ,deepseek-v3 ", {"gpt-4o", "deepseek-v3"})],
)
def test_parse_names(spec: str | None, names: set[str]) -> None:
    assert parse_names(spec) == names


@pytest.mark.parametrize(
    ("models", "flow", "model", "label"),
    [
        (None, {}, "gpt-4o", OTHER),
        ("gpt-4o", {}, "gpt-4o", "gpt-4o"),
        ("gpt-4o", {}, "GPT-4o", OTHER),
        ("gpt-4o", {}, "gpt-4o\nforged 1", OTHER),
        (None, {"model_concurrency": "qwen=5,*=10"}, "qwen", "qwen"),
        (None, {"model_rpm": "glm=60"}, "glm", "glm"),
        (None, {"model_concurrency": "*=10"}, "*", OTHER),
        (None, {"app_concurrency": "1234=5"}, "1234", OTHER),
    ],
)
def test_model_labels(models: str | None, flow: dict[str, str], model: str, label: str) -> None:
    settings = Settings(dev_mode=True, metrics_models=models, **flow)  # type: ignore[arg-type]
    assert settings.metric_labels.model(model) == label


def test_app_ids_only_when_listed() -> None:
    assert LabelValues().app_id("1234") == OTHER
    labels = Settings(dev_mode=True, metrics_app_ids="1234,5678", app_concurrency="9999=3").metric_labels
    assert (labels.app_id("1234"), labels.app_id("5678"), labels.app_id("9999")) == ("1234", "5678", OTHER)


def test_worker_metrics_listen_on_loopback_unless_told() -> None:
    assert Settings(dev_mode=True).worker_metrics_addr == "127.0.0.1"
    assert Settings(dev_mode=True, worker_metrics_addr="0.0.0.0").worker_metrics_addr == "0.0.0.0"
    with pytest.raises(SystemExit, match="LLMQ_WORKER_METRICS_ADDR: must be an IP address"):
        load_settings(dev_mode=True, worker_metrics_addr="everywhere")
