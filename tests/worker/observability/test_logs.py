"""Log lines: one JSON object each, with the record's own time, its extra fields, and no bearer token."""

from __future__ import annotations

import json
import logging
import sys
import time

import pytest

from llmq.worker.observability.logs import JsonFormatter, TextFormatter


def record(message: str, *args: object, created: float | None = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("llmq.worker", logging.INFO, "job_runner.py", 1, message, args, None)
    if created is not None:
        rec.created = created
        rec.msecs = int((created - int(created)) * 1000)
    rec.__dict__.update(extra)
    return rec


def test_a_json_line_carries_the_message_its_fields_and_the_records_time() -> None:
    formatter = JsonFormatter()
    line = json.loads(formatter.format(record("attempt %s for %s", "succeeded", "你好", created=1_764_547_200.045,
                                              job_id="j_1", attempt=2, status_code=200)))
    assert line == {"ts": "2025-12-01T00:00:00.045Z", "level": "info", "logger": "llmq.worker",
                    "msg": "attempt succeeded for 你好", "job_id": "j_1", "attempt": 2, "status_code": 200}


def test_each_line_has_its_own_time_across_seconds() -> None:
    formatter = JsonFormatter()
    stamps = [json.loads(formatter.format(record("x", created=t)))["ts"]
              for t in (1_764_547_200.75, 1_764_547_201.25, 1_764_547_200.5, 1_764_633_600.0)]
    assert stamps == ["2025-12-01T00:00:00.750Z", "2025-12-01T00:00:01.250Z", "2025-12-01T00:00:00.500Z",
                      "2025-12-02T00:00:00.000Z"]
    now = time.time()
    assert json.loads(formatter.format(record("x", created=now)))["ts"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)))


def test_a_bearer_token_never_reaches_a_line() -> None:
    for formatter in (JsonFormatter(), TextFormatter()):
        text = formatter.format(record("calling with %s", "Authorization: Bearer 4242:app-key-secret"))
        assert "app-key-secret" not in text and "Bearer [redacted]" in text


def test_an_exception_is_kept_redacted() -> None:
    try:
        raise RuntimeError("Bearer 4242:app-key-secret refused")
    except RuntimeError:
        rec = record("failed")
        rec.exc_info = sys.exc_info()
    line = json.loads(JsonFormatter().format(rec))
    assert "RuntimeError" in line["exc"] and "app-key-secret" not in line["exc"]


FORGING_MODELS = [
    "gpt-4o\n2026-12-06 04:00:00,000 INFO  llmq.worker: attempt succeeded [job_id=forged]",
    "m\r\nINFO forged",
    "m\rERROR overwritten on a terminal",
    "m\x1b[2K\x1b[1Gerased",  # terminal escapes
    "m\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029end",  # every other line break Python's splitlines() knows
]


@pytest.mark.parametrize("model", FORGING_MODELS)
def test_a_text_line_cannot_be_split_or_forged_by_what_it_shows(model: str) -> None:
    line = TextFormatter().format(record("attempt failed for %s", model, job_id="j_1", model=model))
    assert len(line.splitlines()) == 1
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F or c in "\u2028\u2029" for c in line)
    assert f"attempt failed for {model[0]}" in line and "[job_id=j_1 model=" in line
    assert "你好" in TextFormatter().format(record("model %s", "你好"))  # other scripts stay as they are


@pytest.mark.parametrize("model", FORGING_MODELS)
def test_a_json_line_keeps_control_characters_inside_its_strings(model: str) -> None:
    line = JsonFormatter().format(record("attempt failed for %s", model, job_id="j_1", model=model))
    assert "\n" not in line and "\r" not in line
    parsed = json.loads(line)
    assert parsed["model"] == model and parsed["msg"] == f"attempt failed for {model}"
