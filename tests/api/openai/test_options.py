"""The call's options outside its body: Prefer (RFC 7240), the SDK's read timeout, and the wait they set."""

from __future__ import annotations

import pytest

from llmq.api.openai.errors import OpenAIError
from llmq.api.openai.options import Preferences, parse_prefer, read_timeout_s, wait_bound_s
from llmq.worker.settings import Settings


@pytest.mark.parametrize(("headers", "expected"), [
    (None, Preferences()),
    ([], Preferences()),
    (["respond-async"], Preferences(respond_async=True)),
    (["Respond-Async"], Preferences(respond_async=True)),
    (["respond-async, wait=10"], Preferences(True, 10.0)),
    (["wait=2.5"], Preferences(wait_s=2.5)),
    (['wait="30"'], Preferences(wait_s=30.0)),
    (["respond-async", "wait=5"], Preferences(True, 5.0)),  # several Prefer headers
    (["handling=lenient; foo=bar, wait=7"], Preferences(wait_s=7.0)),  # unknown preferences ignored
    (["return=minimal;x=1, respond-async;param"], Preferences(respond_async=True)),
])
def test_prefer_is_parsed(headers: list[str] | None, expected: Preferences) -> None:
    assert parse_prefer(headers) == expected


@pytest.mark.parametrize("value", ["wait=", "wait=abc", "wait=0", "wait=-3", "wait=inf", "wait=nan"])
def test_a_wait_that_is_not_a_positive_number_is_a_400(value: str) -> None:
    with pytest.raises(OpenAIError) as caught:
        parse_prefer([value])
    assert caught.value.status_code == 400 and caught.value.param == "Prefer"
    assert "seconds" in caught.value.message


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None), ("600", 600.0), ("600.0", 600.0), ("2.5", 2.5), ("0", None), ("-1", None), ("nan", None),
    ("inf", None), ("soon", None),
])
def test_sdk_read_timeout_is_read_when_usable(raw: str | None, expected: float | None) -> None:
    assert read_timeout_s(raw) == expected


SETTINGS = Settings(secret="s" * 32, openai_wait_s=600, openai_max_wait_s=3600)


@pytest.mark.parametrize(("preferences", "read_timeout", "expected"), [
    (Preferences(), None, 600.0),  # nothing stated: the configured bound
    (Preferences(wait_s=30), None, 30.0),  # Prefer: wait is the caller's own bound, exactly
    (Preferences(), 600.0, 599.0),  # the SDK's read timeout, less a second: llmq answers first
    (Preferences(), 2.0, 1.8),  # ... or less a tenth, for short ones
    (Preferences(wait_s=30), 600.0, 30.0),  # the shortest stated wins
    (Preferences(wait_s=900), 10.0, 9.0),
    (Preferences(wait_s=86_400), None, 3600.0),  # never above LLMQ_OPENAI_MAX_WAIT_S
    (Preferences(), 86_400.0, 3600.0),
])
def test_wait_bound(preferences: Preferences, read_timeout: float | None, expected: float) -> None:
    assert wait_bound_s(preferences, read_timeout, SETTINGS) == pytest.approx(expected)
