"""Log lines: JSON for machines, plain text for the local run; never a key."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# Anything shaped like "Bearer <token>" is masked, whatever logged it.
_BEARER = re.compile(r"(Bearer\s+)[^\s\"']+", re.IGNORECASE)
_EXTRA_FIELDS = ("job_id", "attempt", "model", "status_code", "duration_ms", "outcome", "app_id", "queue")


def redact(text: str) -> str:
    return _BEARER.sub(r"\1[redacted]", text)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(line, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{n}={getattr(record, n)}" for n in _EXTRA_FIELDS if hasattr(record, n))
        return redact(super().format(record) + (f" [{extras}]" if extras else ""))


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # httpx2 logs every request at INFO; keep it for debugging only.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # Celery's own per-task lines ("received", "succeeded in") repeat what llmq's attempt lines say.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(logging.WARNING)
