"""Flower as the tests see it: started with basic auth, read through its API."""

from __future__ import annotations

import time

import httpx2

FLOWER_AUTH = ("ops", "flower-test-password")


def flower_tasks(url: str, job_ids: set[str], timeout_s: float = 20) -> str:
    """Flower's task list once it shows every given job (it learns of tasks from events)."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = httpx2.get(f"{url}/api/tasks", auth=FLOWER_AUTH, timeout=5).text
        if all(job_id in text for job_id in job_ids) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)
