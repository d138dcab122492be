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


def feed(client: redis.Redis, limit: int, lines: list[tuple[int, int]], next_line: str = "0", fair_app: str = "",
         queue: str = "") -> int:
    """FEED of one job per (line number, byte after it), due at 5000.0, its message pushed to `queue` ('' for
    none); returns the jobs recorded."""
    keys = [redis_keys.batch(BATCH), redis_keys.batch_inflight(BATCH), redis_keys.UNFINISHED_PARTITIONS, PARTITION,
            redis_keys.DEADLINES, redis_keys.FAIR_APPS, redis_keys.FAIR_DOORBELL]
    args: list[str | int] = [next_line, 3600, limit, "5000.0", fair_app]
    for line, offset in lines:
        job_id = f"job_line{line}"
        keys += [redis_keys.job(job_id), queue]
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


def test_feed_puts_every_line_on_the_deadline_index_at_the_windows_end(client: redis.Redis) -> None:
    client.hset(redis_keys.batch(BATCH), mapping={"status": "in_progress", "next_line": "0"})
    assert feed(client, 10, [(1, 10), (2, 20)]) == 2
    assert client.zrange(redis_keys.DEADLINES, 0, -1, withscores=True) == [("job_line1", 5000.0), ("job_line2", 5000.0)]


def test_feed_with_fair_turns_enters_the_app_and_rings_once(client: redis.Redis) -> None:
    ready = redis_keys.fair_ready("7100", "llmq.low")
    client.hset(redis_keys.batch(BATCH), mapping={"status": "in_progress", "next_line": "0"})
    assert feed(client, 10, [(1, 10), (2, 20)], fair_app="7100", queue=ready) == 2
    assert client.llen(ready) == 2
    assert client.zrange(redis_keys.FAIR_APPS, 0, -1, withscores=True) == [("7100", 0.0)]
    assert client.llen(redis_keys.FAIR_DOORBELL) == 2  # one token per line, up to a few
    # Already waiting for its turn: its score stays, no second ring.
    client.zadd(redis_keys.FAIR_APPS, {"7100": 5.0})
    assert feed(client, 10, [(3, 30)], next_line="2", fair_app="7100", queue=ready) == 1
    assert client.zscore(redis_keys.FAIR_APPS, "7100") == 5.0 and client.llen(redis_keys.FAIR_DOORBELL) == 2
