"""Log lines: one JSON object each, with the record's own time, its extra fields, and no bearer token."""

from __future__ import annotations

import json
import logging
import sys
import time

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
