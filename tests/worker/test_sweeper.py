"""The sweeper, against a real Redis: what it publishes again, what it fails, what it leaves alone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.batches.runner import resume_stalled
from llmq.worker.job_runner import Runtime
from llmq.worker.jobs.record import NewJob, new_job_id
from llmq.worker.jobs.store import JobStore
from llmq.worker.proxy.client import UpstreamClient
from llmq.worker.proxy.retry_policy import RetryPolicy
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import load_settings
from llmq.worker.sweeper import MAX_REQUEUES, expire_overdue, sweep

NOW = time.time()
VISIBILITY = 600


@pytest.fixture
def rt(redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[Runtime]:
    monkeypatch.setenv("LLMQ_DEV_MODE", "1")
    settings = load_settings(stuck_after_s=3600, visibility_timeout_s=VISIBILITY)
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    client.flushdb()  # db 3 belongs to this test module alone
    upstream = UpstreamClient(settings)
    yield Runtime(settings, client, JobStore(client, 3600), upstream, KeyVault("x" * 20), RetryPolicy())
    client.close()


def make_job(rt: Runtime, status: str, age_s: float, **fields: str) -> str:
    job = NewJob(id=new_job_id(), owner="o", key_token="t", model="m", request_json="{}", environment="test",
                 priority="high", max_attempts=3, created_at=NOW - age_s, app_id="a")
    record = {**job.fields, "status": status, "updated_at": repr(NOW - age_s), **fields}
    rt.redis.hset(redis_keys.job(job.id), mapping=record)
    rt.redis.zadd(redis_keys.ACTIVE_JOBS, {job.id: NOW - age_s})
    return job.id


@pytest.mark.parametrize(
    ("status", "age_s", "fields", "requeued"),
    [
        ("running", 2000, {"lease_until": repr(NOW - VISIBILITY - 1)}, True),
        ("running", 2000, {"lease_until": repr(NOW + 100)}, False),  # a live worker holds it
        ("retrying", 2000, {"next_attempt_at": repr(NOW - VISIBILITY - 1)}, True),
        ("retrying", 2000, {"next_attempt_at": repr(NOW - 10)}, False),  # its message may still come
        ("queued", 4000, {}, True),  # untouched past stuck_after_s: its message may be lost
        ("queued", 700, {}, False),  # a backlog, not a loss
        ("succeeded", 5000, {}, False),
    ],
)
def test_what_is_published_again(
    rt: Runtime, status: str, age_s: float, fields: dict[str, str], requeued: bool
) -> None:
    job_id = make_job(rt, status, age_s, **fields)
    published: list[tuple[str, str, str]] = []
    report = sweep(rt, lambda *args: published.append(args), now=NOW)
    assert (job_id in report.requeued) is requeued
    assert (published == [(job_id, "m", "llmq.high")]) is requeued


def test_a_job_that_never_moves_is_failed_with_a_clear_error(rt: Runtime) -> None:
    job_id = make_job(rt, "running", 2000, lease_until=repr(NOW - VISIBILITY - 1), requeues=str(MAX_REQUEUES))
    notified: list[str] = []
    report = sweep(rt, lambda *args: None, now=NOW, notify=notified.append)
    assert report.failed == [job_id]
    assert notified == [job_id], "its callback (if any) is told"
    job = rt.store.get(job_id)
    assert job is not None and job["status"] == "failed"
    assert job["error"]["type"] == "stuck"
    assert rt.redis.zscore(redis_keys.ACTIVE_JOBS, job_id) is None


def test_a_job_the_sweeper_fails_leaves_its_app_quota(rt: Runtime) -> None:
    """Every terminal change takes the job out of the quota set its record names (api.job_store)."""
    quota = redis_keys.app_unfinished("a")
    job_id = make_job(rt, "running", 2000, lease_until=repr(NOW - VISIBILITY - 1), requeues=str(MAX_REQUEUES),
                      quota_set=quota)
    rt.redis.zadd(quota, {job_id: NOW - 2000, "job_another": NOW})
    assert sweep(rt, lambda *args: None, now=NOW).failed == [job_id]
    assert rt.redis.zrange(quota, 0, -1) == ["job_another"]


def test_republishing_counts_only_while_the_job_makes_no_attempt(rt: Runtime) -> None:
    overdue = repr(NOW - VISIBILITY - 1)
    job_id = make_job(rt, "retrying", 2000, next_attempt_at=overdue, attempt_count="2")
    for n in range(1, MAX_REQUEUES + 1):
        rt.redis.zadd(redis_keys.ACTIVE_JOBS, {job_id: NOW - 9000})
        assert sweep(rt, lambda *args: None, now=NOW).requeued == [job_id]
        assert rt.redis.hget(redis_keys.job(job_id), "requeues") == str(n)
    # An attempt since the last republish is progress: the count starts again rather than failing the job.
    rt.redis.hset(redis_keys.job(job_id), "attempt_count", "3")
    rt.redis.zadd(redis_keys.ACTIVE_JOBS, {job_id: NOW - 9000})
    assert sweep(rt, lambda *args: None, now=NOW).requeued == [job_id]
    assert rt.redis.hmget(redis_keys.job(job_id), ["requeues", "requeued_at_attempt"]) == ["1", "3"]
    # No attempt since: it fails once the count is used up again.
    for _ in range(MAX_REQUEUES):
        rt.redis.zadd(redis_keys.ACTIVE_JOBS, {job_id: NOW - 9000})
        report = sweep(rt, lambda *args: None, now=NOW)
    assert report.failed == [job_id]


def test_expired_jobs_leave_the_index_and_their_stream_goes(rt: Runtime) -> None:
    rt.redis.zadd(redis_keys.ACTIVE_JOBS, {"job_gone": NOW - 9000})
    rt.redis.xadd(redis_keys.job_events("job_gone"), {"e": "{}"})  # begun by a claim, never given a TTL
    report = sweep(rt, lambda *args: None, now=NOW)
    assert report.forgotten == 1
    assert rt.redis.zscore(redis_keys.ACTIVE_JOBS, "job_gone") is None
    assert not rt.redis.exists(redis_keys.job_events("job_gone"))


def test_a_requeued_job_waits_a_full_period_before_the_next(rt: Runtime) -> None:
    job_id = make_job(rt, "queued", 4000)
    assert sweep(rt, lambda *args: None, now=NOW).requeued == [job_id]
    assert sweep(rt, lambda *args: None, now=NOW + 10).requeued == []


def test_a_live_job_comes_due_again_when_it_could_first_be_overdue(rt: Runtime) -> None:
    # A claim leaves the job's entry at its submission time; the sweeper moves it to where it can matter.
    lease_until = NOW + 100
    job_id = make_job(rt, "running", 2000, lease_until=repr(lease_until))
    assert sweep(rt, lambda *args: None, now=NOW).requeued == []
    horizon_lag = min(VISIBILITY, 3600)
    assert rt.redis.zscore(redis_keys.ACTIVE_JOBS, job_id) == pytest.approx(lease_until + VISIBILITY - horizon_lag)
    assert sweep(rt, lambda *args: None, now=lease_until + VISIBILITY + 1).requeued == [job_id]


def test_a_finished_job_left_in_the_index_leaves_it(rt: Runtime) -> None:
    job_id = make_job(rt, "succeeded", 5000)
    assert sweep(rt, lambda *args: None, now=NOW).requeued == []
    assert rt.redis.zscore(redis_keys.ACTIVE_JOBS, job_id) is None


@pytest.mark.parametrize(
    ("status", "fields", "ends_expired", "index"),
    [
        ("queued", {}, True, "gone"),
        ("retrying", {"next_attempt_at": repr(NOW + 30)}, True, "gone"),
        # An attempt in flight runs to its end; the job is looked at again once its lease could have lapsed.
        ("running", {"lease_until": repr(NOW + 40)}, False, NOW + 40),
        ("succeeded", {}, False, "gone"),
    ],
)
def test_what_the_deadline_check_expires(
    rt: Runtime, status: str, fields: dict[str, str], ends_expired: bool, index: object
) -> None:
    job_id = make_job(rt, status, 100, deadline=repr(NOW - 1), **fields)
    rt.redis.zadd(redis_keys.DEADLINES, {job_id: NOW - 1})
    notified: list[str] = []
    assert expire_overdue(rt, now=NOW, notify=notified.append) == ([job_id] if ends_expired else [])
    job = rt.store.get(job_id)
    assert job is not None
    assert job["status"] == ("expired" if ends_expired else status)
    assert notified == ([job_id] if ends_expired else [])
    if ends_expired:
        assert job["error"]["type"] == "deadline_exceeded" and "next_attempt_at" not in job
    score = rt.redis.zscore(redis_keys.DEADLINES, job_id)
    assert score == (None if index == "gone" else index)


def test_a_job_whose_deadline_is_ahead_is_left_alone(rt: Runtime) -> None:
    job_id = make_job(rt, "queued", 100, deadline=repr(NOW + 60))
    rt.redis.zadd(redis_keys.DEADLINES, {job_id: NOW + 60})
    assert expire_overdue(rt, now=NOW) == []
    assert rt.redis.zscore(redis_keys.DEADLINES, job_id) == NOW + 60
def test_stalled_batches_get_a_step_again(rt: Runtime) -> None:
    """A batch not stepped for `batch_stall_s` has lost its chain of steps: the sweeper publishes one."""
    stall = rt.settings.batch_stall_s
    rt.redis.zadd(redis_keys.ACTIVE_BATCHES, {"batch_stalled": NOW - stall - 1, "batch_alive": NOW - stall + 5})
    published: list[str] = []
    assert resume_stalled(rt, published.append, now=NOW) == ["batch_stalled"] == published
    # Not again before another full period: its entry now scores the resume.
    assert resume_stalled(rt, published.append, now=NOW + 1) == []
    assert rt.redis.zscore(redis_keys.ACTIVE_BATCHES, "batch_stalled") == NOW
