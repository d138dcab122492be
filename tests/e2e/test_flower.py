"""Flower, started with authentication as documented, shows tasks with their states, RETRY included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx2

from tests.flower import FLOWER_AUTH
from tests.stack import CALLER_APP_KEY, MockProxy, Stack, chat, eventually, submit, wait_finished, wait_status


def job_tasks(flower: str, job_id: str) -> list[dict]:  # type: ignore[type-arg]
    tasks = httpx2.get(f"{flower}/api/tasks", auth=FLOWER_AUTH, timeout=5).json()
    return [task for task in tasks.values() if job_id in (task.get("args") or "")]


def task_states(flower: str, job_id: str) -> set[str]:
    """The states Flower shows for the job's task. A retried task reads RETRY only until the worker takes its
    next delivery (at once, to hold it for its countdown); its `retried` timestamp stays."""
    states = set()
    for task in job_tasks(flower, job_id):
        states.add(task["state"])
        if task.get("retried"):
            states.add("RETRY")
    return states


def test_flower_shows_retry_then_success(stack: Stack, mock_proxy: MockProxy, flower: str, model: str) -> None:
    assert httpx2.get(f"{flower}/api/tasks", timeout=5).status_code == 401, "Flower's API needs a login"
    # Two long Retry-Afters keep the task in RETRY for ~10 s, long enough to see on a busy machine.
    mock_proxy.script(model, *[{"kind": "status", "status": 429, "headers": {"Retry-After": "5"}}] * 2)
    with stack.client() as client:
        job_id = submit(client, chat(model))["id"]
        wait_status(client, job_id, "retrying")
        eventually(lambda: "RETRY" in task_states(flower, job_id), 9, "Flower to show the task in RETRY", 0.1)
        assert wait_finished(client, job_id)["status"] == "succeeded"
    eventually(lambda: "SUCCESS" in task_states(flower, job_id), 10, "Flower to show the task's success", 0.1)
    (task,) = job_tasks(flower, job_id)
    assert task["retries"] == 2 and task["retried"], "Flower counts both retries"
    workers = httpx2.get(f"{flower}/api/workers", auth=FLOWER_AUTH, params={"refresh": "1"}, timeout=10)
    assert workers.status_code == 200 and workers.json(), "Flower lists the running worker"
    assert CALLER_APP_KEY not in workers.text


def test_flower_shows_an_expired_jobs_task_as_failure(
    stack: Stack, mock_proxy: MockProxy, flower: str, model: str
) -> None:
    # The retry the proxy asks for would start after the deadline: the task ends the job `expired`.
    mock_proxy.script(model, {"kind": "status", "status": 503, "headers": {"Retry-After": "4"}})
    deadline = (datetime.now(UTC) + timedelta(seconds=2.5)).isoformat()
    with stack.client() as client:
        job_id = submit(client, chat(model), deadline=deadline)["id"]
        assert wait_finished(client, job_id)["status"] == "expired"
    eventually(lambda: "FAILURE" in task_states(flower, job_id), 10, "Flower to show the task's failure", 0.1)
    (task,) = job_tasks(flower, job_id)
    assert "JobExpired" in (task.get("exception") or "")
