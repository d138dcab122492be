"""Memory comes back after a load of hostile keys: huge ones (refused) and many distinct keys of the largest size.

What "comes back" means here: a job's record is kept for LLMQ_RESULT_TTL_S by design, so the Redis figure is taken
once the jobs' records are gone (deleted by the test, as their TTL would). The processes are compared with
themselves after a warm-up of the same load under one key, so first-use allocations (connection pools, imports,
caches of compiled code) are in the baseline and what remains is what the keys cost: the key caches, bounded in
count and, with keys of at most 256 characters, in size.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import psutil
import redis

from llmq.devstack.redis_server import RedisServer
from tests.stack import CALLER_KEY, MockProxy, Stack, chat

JOBS = 400
HUGE_KEYS = 40
HUGE_KEY_BYTES = 3 * 1024 * 1024
KEY_CHARS = 256


def rss_bytes(pid: int) -> int:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (process, *process.children(recursive=True)))


def submit_all(stack: Stack, keys: list[str], model: str) -> list[int]:
    """Each submission's status; 0 where the API closed the connection before the request was sent whole (a head
    over LLMQ_MAX_HEAD_BYTES is answered 431 and the rest left unread)."""
    def one(key: str) -> int:
        with httpx2.Client(base_url=stack.base_url, timeout=60) as client:
            try:
                return client.post("/v1/jobs", json={"request": chat(model)},
                                   headers={"Authorization": f"Bearer {key}"}).status_code
            except (httpx2.WriteError, httpx2.RemoteProtocolError, httpx2.ReadError):
                return 0

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, keys))


def forget_jobs(client: redis.Redis) -> None:
    """What the records' TTL does in time: every job's record and event stream gone."""
    for pattern in ("llmq:job:*", "llmq:events:*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)


def figures(stack: Stack, server: redis.Redis) -> dict[str, int]:
    assert stack.api is not None
    return {"api_rss": rss_bytes(stack.api.pid), "worker_rss": rss_bytes(stack.workers[0].pid),
            "redis_used_memory": int(server.info("memory")["used_memory"])}


def test_memory_comes_back_after_hostile_keys(
    mock_proxy: MockProxy, make_stack: Callable[..., Stack], log_dir: Path, model: str,
    record_figures: Callable[..., None],
) -> None:
    with RedisServer(data_dir=log_dir / "hostile-keys-redis", appendonly=False) as server:
        stack = make_stack(server.url, mock_proxy.url, "hostile-keys", LLMQ_RESULT_TTL_S="60")
        stack.start_api()
        stack.start_worker()
        client = redis.Redis.from_url(server.url)
        try:
            # Warm-up: the same load under one key.
            assert set(submit_all(stack, [CALLER_KEY] * JOBS, model)) == {202}
            stack.wait_all_finished(120)
            forget_jobs(client)
            before = figures(stack, client)

            huge = [f"{i}:" + "k" * HUGE_KEY_BYTES for i in range(HUGE_KEYS)]
            distinct = [f"{i % 7}:" + f"{i:06d}".ljust(KEY_CHARS - 2, "k") for i in range(JOBS)]
            assert all(len(key) == KEY_CHARS for key in distinct)
            huge_statuses = submit_all(stack, huge, model)
            assert set(submit_all(stack, distinct, model)) == {202}
            stack.wait_all_finished(120)
            loaded = figures(stack, client)
            forget_jobs(client)
            after = figures(stack, client)
        finally:
            client.close()
    assert set(huge_statuses) <= {431, 0}, huge_statuses
    record_figures("hostile keys", jobs=JOBS, huge_keys=HUGE_KEYS, huge_key_mb=HUGE_KEY_BYTES / 2**20,
                   before_mb={k: round(v / 2**20, 1) for k, v in before.items()},
                   loaded_mb={k: round(v / 2**20, 1) for k, v in loaded.items()},
                   after_mb={k: round(v / 2**20, 1) for k, v in after.items()})
    for name, value in after.items():
        assert value <= before[name] * 1.10, (name, before[name], value)
