"""The garbage collector's settings for the long-running processes (API and worker).

Either process imports FastAPI or Celery, pydantic, kombu and redis-py: some 90,000 objects that
live as long as it does. CPython's cycle collector walks all of them on every full collection, and under
load those came often enough to cost a fifth of the API's CPU on a `POST /v1/jobs` (docs/performance.md).
`gc.freeze()` once start-up is over moves them to a generation the collector never walks, and a larger
youngest generation makes collections rarer. Reference counting still frees almost everything at once;
only garbage in reference cycles waits a little longer.
"""

from __future__ import annotations

import gc

# Allocations between two collections of the youngest generation (CPython's default is 700), and how many
# collections of one generation trigger one of the next (default 10 and 10).
THRESHOLDS = (20_000, 20, 20)


def freeze_startup_objects() -> None:
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
