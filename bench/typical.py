"""(c) The typical peer: `bench.typical_celery` on its own Redis, calling the same mock."""

from __future__ import annotations

import time
from typing import Any

import psutil

from bench.jobs import chat_request
from bench.stack import BENCH_KEY, BenchStack
from devstack.processes import VENV_BIN, ManagedProcess


def run_typical(stack: BenchStack, n: int, latency_ms: int) -> dict[str, Any]:
    from bench import typical_celery

    env = {**stack.env(), typical_celery.ENV_URL: stack.redis_url}
    args = [str(VENV_BIN / "celery"), "-A", "bench.typical_celery", "worker", "--loglevel=INFO"]
    worker = stack.add(ManagedProcess("typical-celery", args, env, stack.log_dir / "typical-celery.log"))
    worker.wait_for_log("ready.", timeout_s=60)
    app = typical_celery.configure(stack.redis_url)
    url = f"{stack.mock_url}/chat/completions"
    # Prefork with one process per CPU: about cpu_count calls at once; leave room for a loaded machine.
    timeout_s = 120 + 5 * n * latency_ms / 1000
    try:
        started = time.time()
        results = [typical_celery.call_llm.delay(url, BENCH_KEY, chat_request(i)) for i in range(n)]
        deadline = time.monotonic() + timeout_s
        for result in results:
            answer = result.get(timeout=max(deadline - time.monotonic(), 0.1))
            if not answer.get("choices"):
                raise RuntimeError(f"typical task returned no completion: {answer}")
        elapsed = time.time() - started
    finally:
        app.close()
    return {"jobs": n, "elapsed_s": elapsed, "jobs_per_s": n / elapsed,
            "pool": "prefork", "concurrency": _prefork_size(worker)}


def _prefork_size(worker: ManagedProcess) -> int:
    return len(psutil.Process(worker.pid).children())
