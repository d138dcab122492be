"""The usual Celery setup, as tutorials write it: prefork pool with default concurrency (one process per CPU),
Redis broker and result backend, a task making a blocking HTTP call and returning the JSON.

Worker: `TYPICAL_CELERY_REDIS_URL=redis://... celery -A bench.typical_celery worker --loglevel=INFO`
"""

from __future__ import annotations

import os
from typing import Any

import httpx2
from celery import Celery

ENV_URL = "TYPICAL_CELERY_REDIS_URL"
# Without the variable: a port where nothing listens, never the machine's shared Redis.
REDIS_URL = os.environ.get(ENV_URL, "redis://127.0.0.1:1/0")

app = Celery("typical", broker=REDIS_URL, backend=REDIS_URL)
app.conf.broker_connection_retry_on_startup = True


@app.task
def call_llm(url: str, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx2.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    response.raise_for_status()
    return response.json()  # type: ignore[no-any-return]
