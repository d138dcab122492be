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
from llmq.worker.jobs.unfinished import MARK_KEPT_S, partitions_to_sweep
from llmq.worker.proxy.client import UpstreamClient
from llmq.worker.proxy.retry_policy import RetryPolicy
from llmq.worker.secrets.key_vault import KeyVault
from llmq.worker.settings import load_settings
from llmq.worker.sweeper import MAX_REQUEUES, expire_overdue, sweep

NOW = time.time()
VISIBILITY = 600
PARTITION = redis_keys.app_unfinished("a")  # the test jobs' partition of the index of unfinished jobs


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
    record = {**job.fields, "status": status, "updated_at": repr(NOW - age_s), "quota_set": PARTITION, **fields}
    rt.redis.hset(redis_keys.job(job.id), mapping=record)
    rt.redis.zadd(PARTITION, {job.id: NOW - age_s})
    rt.redis.zadd(redis_keys.UNFINISHED_PARTITIONS, {PARTITION: NOW - age_s})
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
    assert rt.redis.zscore(PARTITION, job_id) is None


def test_a_job_the_sweeper_fails_leaves_its_app_quota(rt: Runtime) -> None:
    """Every terminal change takes the job out of the partition its record names, its app's quota."""
    job_id = make_job(rt, "running", 2000, lease_until=repr(NOW - VISIBILITY - 1), requeues=str(MAX_REQUEUES))
    rt.redis.zadd(PARTITION, {"job_another": NOW})
    assert sweep(rt, lambda *args: None, now=NOW).failed == [job_id]
    assert rt.redis.zrange(PARTITION, 0, -1) == ["job_another"]


def test_republishing_counts_only_while_the_job_makes_no_attempt(rt: Runtime) -> None:
    overdue = repr(NOW - VISIBILITY - 1)
    job_id = make_job(rt, "retrying", 2000, next_attempt_at=overdue, attempt_count="2")
    for n in range(1, MAX_REQUEUES + 1):
        rt.redis.zadd(PARTITION, {job_id: NOW - 9000})
        assert sweep(rt, lambda *args: None, now=NOW).requeued == [job_id]
        assert rt.redis.hget(redis_keys.job(job_id), "requeues") == str(n)
    # An attempt since the last republish is progress: the count starts again rather than failing the job.
    rt.redis.hset(redis_keys.job(job_id), "attempt_count", "3")
    rt.redis.zadd(PARTITION, {job_id: NOW - 9000})
    assert sweep(rt, lambda *args: None, now=NOW).requeued == [job_id]
    assert rt.redis.hmget(redis_keys.job(job_id), ["requeues", "requeued_at_attempt"]) == ["1", "3"]
    # No attempt since: it fails once the count is used up again.
    for _ in range(MAX_REQUEUES):
        rt.redis.zadd(PARTITION, {job_id: NOW - 9000})
        report = sweep(rt, lambda *args: None, now=NOW)
    assert report.failed == [job_id]


def test_expired_jobs_leave_the_index_and_their_stream_goes(rt: Runtime) -> None:
    rt.redis.zadd(PARTITION, {"job_gone": NOW - 9000})
    rt.redis.zadd(redis_keys.UNFINISHED_PARTITIONS, {PARTITION: NOW - 9000})
    rt.redis.xadd(redis_keys.job_events("job_gone"), {"e": "{}"})  # begun by a claim, never given a TTL
    report = sweep(rt, lambda *args: None, now=NOW)
    assert report.forgotten == 1
    assert rt.redis.zscore(PARTITION, "job_gone") is None
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
    assert rt.redis.zscore(PARTITION, job_id) == pytest.approx(lease_until + VISIBILITY - horizon_lag)
    assert sweep(rt, lambda *args: None, now=lease_until + VISIBILITY + 1).requeued == [job_id]


def test_a_finished_job_left_in_the_index_leaves_it(rt: Runtime) -> None:
    job_id = make_job(rt, "succeeded", 5000)
    assert sweep(rt, lambda *args: None, now=NOW).requeued == []
    assert rt.redis.zscore(PARTITION, job_id) is None


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


def test_the_sweeper_drops_a_partition_from_the_list_only_when_empty_and_not_marked_lately(rt: Runtime) -> None:
    listed = redis_keys.UNFINISHED_PARTITIONS
    quiet, lately, busy = (redis_keys.app_unfinished(app) for app in ("quiet", "lately", "busy"))
    rt.redis.zadd(listed, {quiet: NOW - MARK_KEPT_S - 1, lately: NOW - MARK_KEPT_S + 5, busy: NOW - 9000})
    rt.redis.zadd(busy, {"job_fresh": NOW})  # not due: the sweep reads no record of it
    sweep(rt, lambda *args: None, now=NOW)
    # A submission may still rely on the recent mark of an empty partition (api.job_store skips marking it).
    assert rt.redis.zrange(listed, 0, -1) == [busy, lately]


def test_the_walk_of_the_partitions_is_bounded_and_resumes_where_it_stopped(rt: Runtime) -> None:
    every = {redis_keys.app_unfinished(f"app{n}") for n in range(300)}
    rt.redis.zadd(redis_keys.UNFINISHED_PARTITIONS, dict.fromkeys(every, NOW))
    seen: set[str] = set()
    walks = 0
    while True:
        walk = partitions_to_sweep(rt.redis, limit=100)
        assert len(walk) < len(every)
        seen.update(walk)
        walks += 1
        if rt.redis.get(redis_keys.UNFINISHED_SWEEP_CURSOR) == "0":
            break
        assert walks < 10
    assert seen == every


def test_an_upgrade_moves_the_previous_versions_index_into_the_partitions(rt: Runtime) -> None:
    """Versions before the partitioned index kept every unfinished job in one sorted set (llmq:jobs:active), batch
    lines with no partition named in their record. The sweeper moves them, and sweeps them in the same pass."""
    legacy = redis_keys.LEGACY_ACTIVE_JOBS
    single = make_job(rt, "queued", 4000)  # its partition named (and it was in both sets)
    rt.redis.delete(redis_keys.UNFINISHED_PARTITIONS)
    rt.redis.sadd(redis_keys.KNOWN_APPS, "a")
    line = make_job(rt, "running", 100, lease_until=repr(NOW + 60))
    stranger = make_job(rt, "retrying", 100, next_attempt_at=repr(NOW + 60))
    rt.redis.hset(redis_keys.job(stranger), "app_id", "b")
    done = make_job(rt, "succeeded", 100)
    for job_id in (line, stranger, done):
        rt.redis.hdel(redis_keys.job(job_id), "quota_set")
        rt.redis.zrem(PARTITION, job_id)
    rt.redis.zadd(legacy, {single: NOW - 4000, line: NOW - 100, stranger: NOW - 100, done: NOW - 100,
                           "job_gone": NOW - 100})
    report = sweep(rt, lambda *args: None, now=NOW)
    assert not rt.redis.exists(legacy)
    assert report.requeued == [single], "overdue: swept in the pass that moved it"
    assert set(rt.redis.zrange(PARTITION, 0, -1)) == {single, line}
    assert rt.redis.zrange(redis_keys.UNKNOWN_APPS_UNFINISHED, 0, -1) == [stranger]
    assert rt.redis.hget(redis_keys.job(line), "quota_set") == PARTITION  # its last transition finds it
    assert rt.redis.hget(redis_keys.job(stranger), "quota_set") == redis_keys.UNKNOWN_APPS_UNFINISHED
    assert set(rt.redis.zrange(redis_keys.UNFINISHED_PARTITIONS, 0, -1)) == {
        PARTITION, redis_keys.UNKNOWN_APPS_UNFINISHED}
    assert rt.store.finish(line, "succeeded", None, result_json="{}")
    assert rt.redis.zrange(PARTITION, 0, -1) == [single]
