"""A job's history is the same whenever somebody starts following it: told by its record before, streamed after.

Against a real Redis, with the worker's own claim and transition scripts and the API's watch script.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from llmq.api.event_history import told_events, told_id, told_index, watch_point
from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.jobs import scripts as job_scripts
from llmq.worker.jobs.record import UNFINISHED, NewJob, dumps, new_job_id, state_event
from llmq.worker.jobs.store import JobStore

OWNER = "owner-1"
LEASE_S = 30.0
TTL_S = 600


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[JobStore]:
    client = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/7", decode_responses=True)
    client.flushdb()  # db 7 belongs to this test module alone
    yield JobStore(client, TTL_S)
    client.close()


def new_job(store: JobStore, **request: Any) -> str:
    job = NewJob(id=new_job_id(), owner=OWNER, key_token="t", model="m", request_json=dumps({"model": "m", **request}),
                 stream=bool(request.get("stream")),
                 environment="test", priority="normal", max_attempts=3, created_at=1_000.0, app_id="a")
    store.redis.hset(redis_keys.job(job.id), mapping=job.fields)
    return job.id


def watch(store: JobStore, job_id: str, owner: str = OWNER) -> tuple[dict[str, str], str]:
    flat, last_id = store.redis.eval(job_scripts.WATCH, 2, redis_keys.job(job_id), redis_keys.job_events(job_id), owner)
    return dict(zip(flat[::2], flat[1::2], strict=True)), last_id


def history(store: JobStore, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """What /events sends a client that connects now: told events, then the stream's."""
    fields = store.redis.hgetall(redis_keys.job(job_id))
    last = store.redis.xrevrange(redis_keys.job_events(job_id), count=1)
    told = told_events(fields, watch_point(fields, last[0][0] if last else "0-0"))
    entries = store.redis.xrange(redis_keys.job_events(job_id))
    streamed = [(event_id, json.loads(entry["e"])) for event_id, entry in entries]
    return [(told_id(n), event) for n, event in enumerate(told)] + streamed


def shape(events: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int | None]]:
    return [(event["status"], event.get("attempt")) for _, event in events]


def attempt(claim_started: float, n: int, **outcome: Any) -> dict[str, Any]:
    return {"n": n, "started_at": claim_started, "duration_ms": 5.0, "status_code": 200, "outcome": "ok", **outcome}


STAGES = ("never", "queued", "running 1", "retrying", "running 2", "finished")


@pytest.mark.parametrize("watched_at", STAGES)
def test_a_retried_job_tells_one_history_wherever_the_watch_began(store: JobStore, watched_at: str) -> None:
    job_id = new_job(store)

    def stage(name: str) -> None:
        if name == watched_at:
            watch(store, job_id)

    stage("queued")
    first = store.claim(job_id, LEASE_S)
    stage("running 1")
    assert store.retry_later(job_id, attempt(first.started_at, 1, outcome="http_500", status_code=500,
                                             retry_in_s=0.2), 0.2)
    stage("retrying")
    second = store.claim(job_id, LEASE_S)
    assert second.attempt == 2
    stage("running 2")
    assert store.finish(job_id, "succeeded", attempt(second.started_at, 2), result_json='{"choices":[{}]}')
    stage("finished")

    events = history(store, job_id)
    assert shape(events) == [("queued", None), ("running", 1), ("retrying", 1), ("running", 2), ("succeeded", None)]
    everything_told = told_events(store.redis.hgetall(redis_keys.job(job_id)), None)
    assert [event["at"] for _, event in events] == pytest.approx([event["at"] for event in everything_told], abs=0.05)
    assert [event["at"] for _, event in events][1] == first.started_at
    ids = [event_id for event_id, _ in events]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-")))) and len(set(ids)) == len(ids)
    followed = watched_at not in ("never", "finished")
    assert bool(store.redis.exists(redis_keys.job_events(job_id))) is followed, "a stream only for a followed job"
    if followed:
        assert 0 < store.redis.ttl(redis_keys.job_events(job_id)) <= TTL_S


def test_a_worker_lost_mid_call_shows_both_attempts(store: JobStore) -> None:
    job_id = new_job(store)
    first = store.claim(job_id, LEASE_S)
    watch(store, job_id)
    second = store.claim(job_id, LEASE_S, now=first.started_at + LEASE_S + 1)  # the first holder vanished
    assert store.finish(job_id, "succeeded", attempt(second.started_at, 2), result_json='{"choices":[{}]}')
    events = history(store, job_id)
    assert shape(events) == [("queued", None), ("running", 1), ("running", 2), ("succeeded", None)]
    assert [event_id for event_id, _ in events[:2]] == ["0-1", "0-2"]
    lost = json.loads(store.redis.hget(redis_keys.job(job_id), "attempts").split("\n")[0])
    assert lost["outcome"] == "worker_lost" and lost["started_at"] == first.started_at


def test_a_job_cancelled_mid_call_tells_its_call_and_the_cancel(store: JobStore) -> None:
    job_id = new_job(store)
    claim = store.claim(job_id, LEASE_S)
    done, _ = store.transition(job_id, "cancelled", UNFINISHED, state_event("cancelled", claim.started_at + 1))
    assert done
    assert not store.finish(job_id, "succeeded", attempt(claim.started_at, 1)), "the worker's result is dropped"
    events = history(store, job_id)
    assert shape(events) == [("queued", None), ("running", 1), ("cancelled", None)]
    assert events[1][1]["at"] == claim.started_at
    assert not store.redis.exists(redis_keys.job_events(job_id))


def test_a_failed_job_tells_its_error(store: JobStore) -> None:
    job_id = new_job(store)
    claim = store.claim(job_id, LEASE_S)
    error = {"type": "upstream_status", "message": "HTTP 400 from the proxy: bad", "status_code": 400}
    assert store.finish(job_id, "failed", attempt(claim.started_at, 1, outcome="http_400", status_code=400),
                        error=error)
    events = history(store, job_id)
    assert shape(events) == [("queued", None), ("running", 1), ("failed", None)]
    assert events[-1][1]["error"] == error


def test_a_streaming_request_streams_from_its_claim_without_a_watch(store: JobStore) -> None:
    job_id = new_job(store, stream=True)
    store.claim(job_id, LEASE_S)
    assert store.redis.xlen(redis_keys.job_events(job_id)) == 1
    fields, last_id = watch(store, job_id)
    assert "watched" not in fields and last_id != "0-0"
    assert shape(history(store, job_id)) == [("queued", None), ("running", 1)]


def test_another_owner_marks_nothing_and_a_second_watch_keeps_the_first_point(store: JobStore) -> None:
    job_id = new_job(store)
    store.claim(job_id, LEASE_S)
    fields, _ = watch(store, job_id, owner="someone-else")
    assert "watched" not in fields and store.redis.hget(redis_keys.job(job_id), "watched") is None
    fields, _ = watch(store, job_id)
    assert fields["watched"] == "0,1"
    store.retry_later(job_id, attempt(1.0, 1, outcome="timeout", retry_in_s=1.0), 1.0)
    fields, _ = watch(store, job_id)
    assert fields["watched"] == "0,1", "the point where the stream began does not move"


@pytest.mark.parametrize(("event_id", "index"), [("0-1", 1), ("0-12", 12), ("1700000000000-0", None)])
def test_told_ids_and_stream_ids_are_told_apart(event_id: str, index: int | None) -> None:
    assert told_index(event_id) == index
    if index is not None:
        assert told_id(index - 1) == event_id
