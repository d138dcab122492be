"""A `llmq.call_proxy` message for a Redis broker, built ahead of time and pushed from a Lua script.

When the broker is the Redis that holds the jobs, the submit script records a job and pushes its
message in one atomic step: a 202 can never name a job that was recorded but not queued, and a batch
queues a thousand jobs in one round trip. Celery builds the message (headers, body); this module only
wraps it as kombu's Redis transport does when it publishes. `tests/worker/runtime/test_broker_message.py`
compares the result with a message published by Celery itself, so a change of format is caught.

Everything but the task id, the job and the queue is the same in every message, so the message is
rendered from a template made once per Celery app: asking Celery for the headers and encoding them
again was a third of a batch's CPU.
"""

from __future__ import annotations

import base64
import functools
import json
import random

from celery import Celery

TASK_NAME = "llmq.call_proxy"
# Stand-ins in the template, each replaced by a format field.
_SLOTS = ("task_id", "argsrepr", "queue", "delivery_tag", "body")


def random_uuid() -> str:
    """A version-4 UUID string for message and delivery ids, which must be unique, not secret.

    From the process's Mersenne Twister (reseeded in a forked child) rather than `uuid.uuid4()`'s
    system call: a third of the time, and two are made per job."""
    digits = f"{random.getrandbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


@functools.lru_cache(maxsize=8)
def _template(app: Celery) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The message as its fixed pieces and the slots between them, and the body's text after the args."""
    headers, properties, body, _ = app.amqp.create_task_message(
        "", TASK_NAME, [], {}, ignore_result=True, argsrepr="", kwargsrepr="{}"
    )
    slot = {name: f"@@{name}@@" for name in _SLOTS}
    shown = {"argsrepr": slot["argsrepr"], "kwargsrepr": "{}"}
    envelope = {
        "body": slot["body"],
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {**headers, "id": slot["task_id"], "root_id": slot["task_id"], **shown},
        "properties": {
            **properties,
            "correlation_id": slot["task_id"],
            **shown,  # Celery's producer repeats them among the properties
            "delivery_mode": 2,  # persistent, as Celery's producer sends it
            "delivery_info": {"exchange": "", "routing_key": slot["queue"]},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": slot["delivery_tag"],
        },
    }
    # Split on the markers: fixed piece, slot name, fixed piece, ..., fixed piece.
    pieces = json.dumps(envelope).split("@@")
    # The body is [args, kwargs, embed]; kombu's JSON serializer writes it as json.dumps does.
    _, kwargs, embed = body
    return tuple(pieces[0::2]), tuple(pieces[1::2]), f", {json.dumps(kwargs)}, {json.dumps(embed)}]"


def call_proxy_message(app: Celery, job_id: str, model: str, queue: str) -> str:
    """The JSON kombu's Redis transport LPUSHes onto `queue` for one attempt of this job.

    `job_id` is one of `new_job_id`'s, URL-safe characters only: it goes into JSON without escaping.
    The pieces are joined rather than `str.format`ted: parsing the 800-character template cost 6 µs a job."""
    fixed, slots, body_tail = _template(app)
    values = {
        "task_id": random_uuid(),
        # JSON-escaped, without the quotes the template already has.
        "argsrepr": json.dumps(f"({job_id!r}, model={model!r})")[1:-1],
        "queue": json.dumps(queue)[1:-1],
        "delivery_tag": random_uuid(),
        "body": base64.b64encode(f'[["{job_id}"]{body_tail}'.encode()).decode(),
    }
    parts = [fixed[0]]
    for slot, piece in zip(slots, fixed[1:], strict=True):
        parts += (values[slot], piece)
    return "".join(parts)
