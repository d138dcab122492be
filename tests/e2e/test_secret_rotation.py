"""LLMQ_SECRET can change without losing queued jobs: the old secret, kept in LLMQ_SECRET_PREVIOUS, still opens
their keys and still recognises their owners."""

from __future__ import annotations

import secrets
from pathlib import Path

from llmq.devstack.redis_server import RedisServer
from tests.stack import CALLER_KEY, OTHER_KEY, MockProxy, Stack, chat, submit, wait_finished


def test_jobs_queued_under_the_old_secret_run_and_stay_their_owners(
    redis_server: RedisServer, mock_proxy: MockProxy, log_dir: Path, model: str
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/13"
    old_secret, new_secret = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    before = Stack(url, mock_proxy.url, log_dir / "rotation-before", LLMQ_SECRET=old_secret)
    try:
        before.redis.flushdb()
        before.start_api()
        with before.client() as client:  # no worker yet: the jobs wait in the queue
            queued = submit(client, chat(model, "queued before the rotation"))["id"]
            followed = submit(client, chat(model, "followed across the rotation"))["id"]
    finally:
        before.stop()

    after = Stack(url, mock_proxy.url, log_dir / "rotation-after", LLMQ_SECRET=new_secret,
                  LLMQ_SECRET_PREVIOUS=f"{secrets.token_urlsafe(24)}, {old_secret}")
    try:
        after.start_api()
        with after.client() as client, after.client(OTHER_KEY) as stranger:
            # Read before a worker runs: the owner, recorded under the old secret, is still recognised.
            assert client.get(f"/v1/jobs/{queued}").json()["status"] == "queued"
            assert stranger.get(f"/v1/jobs/{queued}").status_code == 404
            with client.stream("GET", f"/v1/jobs/{followed}/events") as events:
                assert events.status_code == 200
                after.start_worker()
                lines = [line for line in events.iter_lines() if line.startswith("data: ")]
            fresh = submit(client, chat(model, "submitted after the rotation"))["id"]
            jobs = [wait_finished(client, job_id) for job_id in (queued, followed, fresh)]
            # The listing reads the key's index under each secret: the jobs of both, newest first.
            listed = client.get("/v1/jobs", params={"limit": 2}).json()
            assert [job["id"] for job in listed["data"]] == [fresh, followed] and listed["has_more"]
            rest = client.get("/v1/jobs", params={"limit": 2, "after": listed["next_after"]}).json()
            assert [job["id"] for job in rest["data"]] == [queued] and not rest["has_more"]
            assert stranger.get("/v1/jobs").json()["data"] == []
    finally:
        after.stop()
    assert [job["status"] for job in jobs] == ["succeeded"] * 3, jobs
    assert jobs[0]["result"]["choices"][0]["message"]["content"] == "Echo: queued before the rotation"
    assert '"status":"succeeded"' in lines[-1]  # the old owner's event stream followed the job to its end
    calls = mock_proxy.calls(model)
    assert len(calls) == 3 and all(call["app_id"] == CALLER_KEY.split(":")[0] for call in calls)
