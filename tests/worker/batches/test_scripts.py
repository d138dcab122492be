"""The batch scripts against a real Redis: what FEED records when the app's quota has less room than the lines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from llmq.devstack.redis_server import RedisServer
from llmq.worker import redis_keys
from llmq.worker.batches import scripts

BATCH = "batch_quota"
PARTITION = redis_keys.app_unfinished("7100")


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_server.url.rsplit("/", 1)[0] + "/3", decode_responses=True)
    conn.flushdb()  # db 3 belongs to one test module at a time
    yield conn
    conn.close()


def feed(client: redis.Redis, limit: int, lines: list[tuple[int, int]], next_line: str = "0") -> int:
    """FEED of one job per (line number, byte after it), with no broker message; returns the jobs recorded."""
    keys = [redis_keys.batch(BATCH), redis_keys.batch_inflight(BATCH), redis_keys.UNFINISHED_PARTITIONS, PARTITION]
    args: list[str | int] = [next_line, 3600, limit]
    for line, offset in lines:
        job_id = f"job_line{line}"
        keys += [redis_keys.job(job_id), ""]
        args += [1, "1000.0", job_id, str(line), str(line), str(offset), "", "status", "queued"]
    return int(client.eval(scripts.FEED, len(keys), *keys, *args))


def test_feed_records_only_what_the_quota_has_room_for_and_resumes_after_it(client: redis.Redis) -> None:
    client.hset(redis_keys.batch(BATCH), mapping={"status": "in_progress", "next_line": "0"})
    client.zadd(PARTITION, {"job_of_the_app": 900.0})
    # Room for two of three (the count changed after the feeder read it).
    assert feed(client, 3, [(1, 10), (3, 30), (4, 40)]) == 2
    assert client.hmget(redis_keys.batch(BATCH), ["next_line", "next_offset", "fed"]) == ["3", "30", "2"]
    assert client.zrange(PARTITION, 0, -1) == ["job_of_the_app", "job_line1", "job_line3"]
    assert client.hget(redis_keys.job("job_line3"), "quota_set") == PARTITION
    assert client.hgetall(redis_keys.batch_inflight(BATCH)) == {"job_line1": "1", "job_line3": "3"}
    assert not client.exists(redis_keys.job("job_line4"))
    # At the limit: nothing, and the checkpoint stays.
    assert feed(client, 3, [(4, 40)], next_line="3") == 0
    assert client.hget(redis_keys.batch(BATCH), "next_offset") == "30"


def test_feed_marks_the_partition_in_use(client: redis.Redis) -> None:
    client.hset(redis_keys.batch(BATCH), mapping={"status": "in_progress", "next_line": "0"})
    assert feed(client, 10, [(1, 10)]) == 1
    assert client.zscore(redis_keys.UNFINISHED_PARTITIONS, PARTITION) == 1000.0
