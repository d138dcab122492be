"""A `llmq.call_proxy` message for a Redis broker, built ahead of time and pushed from a Lua script.

When the broker is the Redis that holds the jobs, the submit script records a job and pushes its
message in one atomic step: a 202 can never name a job that was recorded but not queued, and a batch
queues a thousand jobs in one round trip. Celery builds the message (headers, body); this module only
wraps it as kombu's Redis transport does when it publishes. `tests/worker/test_broker_message.py`
compares the result with a message published by Celery itself, so a change of format is caught.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from celery import Celery
from kombu.serialization import dumps as serialize

TASK_NAME = "llmq.call_proxy"


def call_proxy_message(app: Celery, job_id: str, model: str, queue: str) -> str:
    """The JSON kombu's Redis transport LPUSHes onto `queue` for one attempt of this job."""
    task_id = str(uuid.uuid4())
    shown = {"argsrepr": f"({job_id!r}, model={model!r})", "kwargsrepr": "{}"}
    headers, properties, body, _ = app.amqp.create_task_message(
        task_id, TASK_NAME, [job_id], {}, ignore_result=True, **shown
    )
    content_type, content_encoding, data = serialize(body, serializer="json")
    envelope: dict[str, Any] = {
        "body": base64.b64encode(data.encode() if isinstance(data, str) else data).decode(),
        "content-encoding": content_encoding,
        "content-type": content_type,
        "headers": headers,
        "properties": {
            **properties,
            **shown,  # Celery's producer repeats them among the properties
            "delivery_mode": 2,  # persistent, as Celery's producer sends it
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)
