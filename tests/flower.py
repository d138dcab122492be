"""Flower as the tests see it: started with basic auth, read through its API."""

from __future__ import annotations

import httpx2

from tests.stack import eventually

FLOWER_AUTH = ("ops", "flower-test-password")


def flower_tasks(url: str, job_ids: set[str], timeout_s: float = 20) -> str:
    """Flower's task list once it shows every given job (it learns of tasks from events)."""

    def listing() -> str | None:
        text = httpx2.get(f"{url}/api/tasks", auth=FLOWER_AUTH, timeout=5).text
        return text if all(job_id in text for job_id in job_ids) else None

    return eventually(listing, timeout_s, f"Flower to list {len(job_ids)} jobs", interval_s=0.2)
