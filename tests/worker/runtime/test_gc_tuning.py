"""The collector settings the API and the worker apply once they have started."""

from __future__ import annotations

import json
import subprocess
import sys

from llmq.worker.runtime.gc_tuning import THRESHOLDS

PROBE = """
import gc, json
import llmq.api.main  # what the API imports: FastAPI, pydantic, Celery, kombu, redis-py
before = gc.get_freeze_count()
from llmq.worker.runtime.gc_tuning import freeze_startup_objects
freeze_startup_objects()
print(json.dumps([before, gc.get_freeze_count(), gc.get_threshold()]))
"""


def test_startup_objects_are_frozen_and_collections_are_rarer() -> None:
    # In a process of its own: freezing is for the life of a process, and this one runs the whole suite.
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    before, after, thresholds = json.loads(out)
    assert before == 0
    assert after > 50_000, "the imported libraries' objects are out of the collector's way"
    assert tuple(thresholds) == THRESHOLDS
    assert THRESHOLDS[0] > 700, "the youngest generation is larger than CPython's default"
