"""GET /v1/jobs: a key's own jobs, newest first, by status, page after page; nobody else's."""

from __future__ import annotations

import secrets
from typing import Any

import httpx2

from llmq.worker import redis_keys
from tests.stack import Stack, chat, submit, wait_finished


def fresh_key() -> str:
    """A key of its own per test: the shared stack holds other tests' jobs."""
    return f"{secrets.randbelow(9000) + 1000}:listing-{secrets.token_hex(8)}"


def pages(client: httpx2.Client, **params: Any) -> list[dict[str, Any]]:
    """Every page, following next_after until has_more is false."""
    found: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(50):
        response = client.get("/v1/jobs", params={**params, **({"after": after} if after else {})})
        assert response.status_code == 200, response.text
        page = response.json()
        found.append(page)
        if not page["has_more"]:
            assert page["next_after"] is None
            return found
        after = page["next_after"]
    raise AssertionError("the listing never ended")


def ids(listed: list[dict[str, Any]]) -> list[str]:
    return [job["id"] for page in listed for job in page["data"]]


def test_each_key_lists_its_own_jobs_newest_first_and_nobody_elses(stack: Stack, model: str) -> None:
    mine, theirs = fresh_key(), fresh_key()
    with stack.client(mine) as client, stack.client(theirs) as other:
        my_jobs = [submit(client, chat(model, f"mine {n}"))["id"] for n in range(4)]
        batch = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model, f"batch {n}")} for n in range(3)]})
        assert batch.status_code == 202, batch.text
        my_jobs += [job["id"] for job in batch.json()["jobs"]]
        their_jobs = [submit(other, chat(model, f"theirs {n}"))["id"] for n in range(2)]

        listed = pages(client, limit=100)
        assert ids(listed) == my_jobs[::-1]
        assert ids(pages(other)) == their_jobs[::-1]
        # Another key's job id is no cursor.
        refused = client.get("/v1/jobs", params={"after": their_jobs[0]})
        assert refused.status_code == 400
        assert "another key's" in refused.json()["error"]["message"]
        job = listed[0]["data"][0]
        assert {"id", "status", "model", "created_at", "priority"} <= job.keys()
        assert not {"result", "attempts", "deliveries", "owner", "key_token", "request"} & job.keys()


def test_pages_follow_one_another_without_gaps_or_repeats(stack: Stack, model: str) -> None:
    with stack.client(fresh_key()) as client:
        response = client.post("/v1/jobs/batch", json={"jobs": [{"request": chat(model, str(n))} for n in range(7)]})
        submitted = [job["id"] for job in response.json()["jobs"]]
        listed = pages(client, limit=3)
        assert [len(page["data"]) for page in listed] == [3, 3, 1]
        assert [page["has_more"] for page in listed] == [True, True, False]
        assert ids(listed) == submitted[::-1]
        # A job submitted meanwhile does not shift the pages after it.
        newer = submit(client, chat(model, "newer"))["id"]
        second = client.get("/v1/jobs", params={"limit": 3, "after": listed[0]["next_after"]}).json()
        assert [job["id"] for job in second["data"]] == submitted[::-1][3:6]
        assert ids(pages(client, limit=100))[0] == newer


def test_a_status_filter_lists_only_jobs_in_that_status(stack: Stack, model: str) -> None:
    with stack.client(fresh_key()) as client:
        done = [submit(client, chat(model, f"done {n}"))["id"] for n in range(3)]
        for job_id in done:
            assert wait_finished(client, job_id)["status"] == "succeeded"
        assert ids(pages(client, status="succeeded")) == done[::-1]
        assert ids(pages(client, status=["failed", "cancelled", "queued"])) == []
        assert ids(pages(client, status=["succeeded", "failed"], limit=2)) == done[::-1]
        assert {job["status"] for page in pages(client) for job in page["data"]} == {"succeeded"}


def test_bad_listing_parameters_are_told_apart(stack: Stack) -> None:
    with stack.client(fresh_key()) as client:
        assert client.get("/v1/jobs").json() == {"object": "list", "data": [], "has_more": False, "next_after": None}
        for params, status in (({"limit": 101}, 422), ({"limit": 0}, 422), ({"status": "done"}, 422),
                               ({"after": "nope"}, 400), ({"after": "job_" + "A" * 22}, 400)):
            response = client.get("/v1/jobs", params=params)
            assert response.status_code == status, (params, response.text)
            assert response.json()["error"]["message"]


def test_every_owners_index_expires(stack: Stack, model: str) -> None:
    with stack.client(fresh_key()) as client:
        submit(client, chat(model, "indexed"))
    indexes = list(stack.redis.scan_iter(match=redis_keys.owner_jobs("*"), count=1000))
    assert indexes
    assert all(stack.redis.ttl(index) > 0 for index in indexes)
