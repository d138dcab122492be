"""A `llmq.call_proxy` message for a Redis broker, built ahead of time and pushed from a Lua script.

When the broker is the Redis that holds the jobs, the submit script records a job and pushes its
message in one atomic step: a 202 can never name a job that was recorded but not queued, and a batch
queues a thousand jobs in one round trip. Celery builds the message (headers, body); this module only
wraps it as kombu's Redis transport does when it publishes. `tests/worker/test_broker_message.py`
compares the result with a message published by Celery itself, so a change of format is caught.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from typing import Any

from celery import Celery

TASK_NAME = "llmq.call_proxy"


@functools.lru_cache(maxsize=8)
def _template(app: Celery) -> tuple[dict[str, Any], dict[str, Any], str]:
    """What Celery puts in every such message, built once: headers, properties and the body's tail.

    Only the task id, the job id and the queue change from message to message; asking Celery for the
    rest each time was a tenth of a submission's CPU."""
    headers, properties, body, _ = app.amqp.create_task_message(
        "", TASK_NAME, [], {}, ignore_result=True, argsrepr="", kwargsrepr="{}"
    )
    # The body is [args, kwargs, embed]; kombu's JSON serializer writes it as json.dumps does.
    _, kwargs, embed = body
    return headers, properties, f", {json.dumps(kwargs)}, {json.dumps(embed)}]"


def call_proxy_message(app: Celery, job_id: str, model: str, queue: str) -> str:
    """The JSON kombu's Redis transport LPUSHes onto `queue` for one attempt of this job."""
    headers, properties, body_tail = _template(app)
    task_id = str(uuid.uuid4())
    shown = {"argsrepr": f"({job_id!r}, model={model!r})", "kwargsrepr": "{}"}
    body = f"[{json.dumps([job_id])}{body_tail}"
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {**headers, "id": task_id, "root_id": task_id, **shown},
        "properties": {
            **properties,
            "correlation_id": task_id,
            **shown,  # Celery's producer repeats them among the properties
            "delivery_mode": 2,  # persistent, as Celery's producer sends it
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)
