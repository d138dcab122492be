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
    # One encoder for every line: json.dumps with options builds a new one per call.
    _encoder = json.JSONEncoder(ensure_ascii=False, default=str)

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # formatted once per second, not per line
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name in _EXTRA_FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exc"] = redact(self.formatException(record.exc_info))
        return self._encoder.encode(line)


# Control characters and every other line break (what str.splitlines() cuts at, and terminal escapes): shown
# escaped, so a caller's text (a model name, a proxy's message) cannot start a line of its own in a text log.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        # The message only: a traceback appended after it keeps its own lines.
        record.message = escape_controls(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(f"{n}={escape_controls(str(getattr(record, n)))}" for n in _EXTRA_FIELDS
                          if hasattr(record, n))
        return redact(super().format(record) + (f" [{extras}]" if extras else ""))


def configure_logging(log_format: str, level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # No line shows the thread, the process or the caller's source line, so records skip looking them up
    # (the logging HOWTO's "Optimization" section): about half of a line's cost, and the worker writes one a job.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # type: ignore[attr-defined]
    # httpx2 logs every request at INFO; keep it for debugging only.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    # Celery's own per-task lines ("received", "succeeded in") repeat what llmq's attempt lines say.
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("httpcore").setLevel(logging.WARNING)
