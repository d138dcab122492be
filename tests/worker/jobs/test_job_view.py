"""The public view of a record: what GET, the submission's answer and webhooks show."""

from __future__ import annotations

import dataclasses
import json

import pytest

from llmq.worker.jobs.record import NewJob, dumps, public_view
from llmq.worker.jobs.view import job_json, job_json_bytes, new_job_json_bytes


def a_job() -> NewJob:
    return NewJob(id="job_" + "a" * 22, owner="owner-fingerprint", key_token="token", model="m",
                  request_json=dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 1000}]}),
                  environment="test", priority="normal", max_attempts=3, created_at=1_700_000_000.25,
                  app_id="4242", metadata={"ticket": 7})


def test_internal_fields_and_the_request_stay_out() -> None:
    fields = a_job().fields
    fields["request"] = "{not json"  # never parsed: a read does not pay for the caller's own prompt
    view = public_view(fields)
    assert not {"key_token", "owner", "request"} & view.keys()
    assert view["metadata"] == {"ticket": 7}


def test_the_bytes_answer_is_the_same_view_as_the_json_one() -> None:
    fields = a_job().fields
    assert json.loads(job_json_bytes(fields)) == job_json(fields)
    assert json.loads(job_json_bytes(fields))["created_at"].startswith("2023-11-14T22:13:20.25")


@pytest.mark.parametrize("changes", [
    {},
    {"metadata": None, "stream": True, "priority": "high", "environment": "prod"},
    {"callback": {"url": "https://example.com/hook"}, "callback_secret_token": "secret-token",
     "metadata": {"nested": {"list": [1, 2.5, None, "ü"]}}},
    {"created_at": 1_700_000_000.123456789},
    {"deadline": 1_700_000_600.5},
])
def test_a_new_jobs_answer_is_its_records_view(changes: dict[str, object]) -> None:
    job = dataclasses.replace(a_job(), **changes)
    assert new_job_json_bytes(job) == job_json_bytes(job.fields)


def test_a_deadline_is_shown_as_an_rfc3339_utc_time() -> None:
    job = dataclasses.replace(a_job(), deadline=1_700_000_600.5)
    assert job.fields["deadline"] == "1700000600.5"
    assert job_json(job.fields)["deadline"] == "2023-11-14T22:23:20.500000Z"
    assert "deadline" not in job_json(a_job().fields)
