"""(c) The typical peer: `bench.typical_celery` on its own Redis, calling the same mock.

The client side (`.delay()` then `.get()`) runs in a fresh process, so the Celery app is configured from the
environment exactly as a tutorial's would be: `python -m llmq.bench.typical <n> <url> <timeout_s>`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import psutil

from llmq.bench.jobs import chat_request
from llmq.bench.stack import BENCH_KEY, ROOT, BenchStack
from llmq.devstack.processes import VENV_BIN, ManagedProcess

# As in bench.typical_celery, not imported from there: importing it creates that app in this process.
ENV_URL = "TYPICAL_CELERY_REDIS_URL"


def client(n: int, url: str, timeout_s: float) -> dict[str, Any]:
    from llmq.bench.typical_celery import call_llm

    started = time.time()
    results = [call_llm.delay(url, BENCH_KEY, chat_request(i)) for i in range(n)]
    deadline = time.monotonic() + timeout_s
    for result in results:
        answer = result.get(timeout=max(deadline - time.monotonic(), 0.1))
        if not answer.get("choices"):
            raise RuntimeError(f"typical task returned no completion: {answer}")
    elapsed = time.time() - started
    return {"jobs": n, "elapsed_s": elapsed, "jobs_per_s": n / elapsed}


def run_typical(stack: BenchStack, n: int, latency_ms: int) -> dict[str, Any]:
    env = {**stack.env(), ENV_URL: stack.redis_url}
    args = [str(VENV_BIN / "celery"), "-A", "llmq.bench.typical_celery", "worker", "--loglevel=INFO"]
    worker = stack.add(ManagedProcess("typical-celery", args, env, stack.log_dir / "typical-celery.log"))
    worker.wait_for_log("ready.", timeout_s=60)
    # Prefork with one process per CPU: about cpu_count calls at once; leave room for a loaded machine.
    timeout_s = 120 + 5 * n * latency_ms / 1000
    done = subprocess.run(
        [sys.executable, "-m", "llmq.bench.typical", str(n), f"{stack.mock_url}/chat/completions", str(timeout_s)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s + 60, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"typical Celery client failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result.update(pool="prefork", concurrency=len(psutil.Process(worker.pid).children()))
    return result


if __name__ == "__main__":
    print(json.dumps(client(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]))), flush=True)
