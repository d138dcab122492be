"""`python -m llmq.bench.batch_api`: a whole OpenAI batch through llmq, against the direct client's ceiling.

One stack (private Redis, mock proxy at `--latency-ms`, API, one worker with `--slots` calls at once), the
official SDK as the client. A generated file of `--lines` realistic chat requests is uploaded (time, and the
API's peak RSS growth, sampled every 50 ms), a batch created and polled until it completes (lines/s fed into
the queue, Redis's peak `used_memory` over its level before the batch), and the output file streamed back.
The ratio compares the batch's wall time with the direct client's ceiling, lines x latency / slots: what a
client holding `--slots` calls open at once all the time could do at best.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from openai import OpenAI

from llmq.bench.files import write_batch_file
from llmq.bench.stack import BENCH_KEY, LOG_DIR, RESULTS_DIR, BenchStack
from llmq.worker.settings import Settings

MB = 1024 * 1024
TARGET_RATIO = 0.9


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


class Peak(threading.Thread):
    """Samples a value every `interval_s` and keeps the highest."""

    def __init__(self, read: Any, interval_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.read, self.interval_s = read, interval_s
        self.peak = read()
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            self.peak = max(self.peak, self.read())

    def stop(self) -> int:
        self.stopping.set()
        self.join()
        return int(self.peak)


def run(lines: int, latency_ms: int, slots: int, window: int, workers: int = 1,
        step_interval_s: float | None = None) -> dict[str, Any]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmq-bench-batch-") as scratch, \
            BenchStack("batch-api", slots) as stack:
        path = Path(scratch) / "batch.jsonl"
        size = write_batch_file(path, lines)
        stack.start_mock(latency_ms)
        env = {**stack.env(), "LLMQ_FILES_DIR": str(Path(scratch) / "files"),
               "LLMQ_BATCH_WINDOW_LINES": str(window)}
        if step_interval_s is not None:
            env["LLMQ_BATCH_STEP_INTERVAL_S"] = str(step_interval_s)
        stack.start_api(env)
        # The slots split between the worker processes: the ceiling stays that of `slots` calls at once.
        for n in range(workers):
            stack.start_worker({**env, "LLMQ_WORKER_CONCURRENCY": str(slots // workers)}, name=f"bench{n}")
        assert stack.api is not None and stack.redis is not None
        redis = stack.redis
        api = psutil.Process(stack.api.pid)
        step_s = step_interval_s or Settings.model_fields["batch_step_interval_s"].default
        out: dict[str, Any] = {"lines": lines, "file_mb": size / MB, "latency_ms": latency_ms, "slots": slots,
                               "workers": workers, "window": window, "step_interval_s": step_s}
        with OpenAI(api_key=BENCH_KEY, base_url=f"{stack.api_url}/v1", timeout=600) as client:
            rss_before = api.memory_info().rss
            rss = Peak(lambda: api.memory_info().rss)
            rss.start()
            started = time.perf_counter()
            uploaded = client.files.create(file=("batch.jsonl", io.BytesIO(path.read_bytes())), purpose="batch")
            out["upload_s"] = time.perf_counter() - started
            out["api_rss_growth_mb"] = (rss.stop() - rss_before) / MB
            say(f"uploaded {size / MB:.1f} MB in {out['upload_s']:.2f}s")

            commands_before = int(redis.info("stats")["total_commands_processed"])
            memory_before = int(redis.info("memory")["used_memory"])
            memory = Peak(lambda: int(redis.info("memory")["used_memory"]), 0.25)
            memory.start()
            started = time.perf_counter()
            batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                          completion_window="24h")
            all_fed_s = None
            while batch.status not in ("completed", "failed", "expired", "cancelled"):
                time.sleep(0.25)
                batch = client.batches.retrieve(batch.id)
                if all_fed_s is None and int(redis.hget(f"llmq:batch:{batch.id}", "fed") or 0) >= lines:
                    all_fed_s = time.perf_counter() - started
            out["batch_s"] = time.perf_counter() - started
            out["redis_peak_growth_mb"] = (memory.stop() - memory_before) / MB
            # Commands clients sent (those inside scripts not counted), the benchmark's few polls included.
            out["commands_per_line"] = (int(redis.info("stats")["total_commands_processed"]) - commands_before) / lines
            if batch.status != "completed" or batch.request_counts is None:
                raise RuntimeError(f"the batch ended {batch.status}: {batch.errors}")
            out["completed"], out["failed"] = batch.request_counts.completed, batch.request_counts.failed
            out["lines_fed_per_s"] = lines / (all_fed_s or out["batch_s"])
            started = time.perf_counter()
            streamed = 0
            with client.files.with_streaming_response.content(batch.output_file_id or "") as response:
                for chunk in response.iter_bytes():
                    streamed += len(chunk)
            out["output_stream_s"] = time.perf_counter() - started
            out["output_mb"] = streamed / MB
        out["ceiling_s"] = lines * latency_ms / 1000 / slots
        out["ratio"] = out["ceiling_s"] / out["batch_s"]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.batch_api", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--slots", type=int, default=200, help="calls at once, LLMQ_WORKER_CONCURRENCY of the worker")
    parser.add_argument("--workers", type=int, default=1, help="worker processes sharing the slots (default 1)")
    parser.add_argument("--window", type=int, default=1000, help="LLMQ_BATCH_WINDOW_LINES")
    parser.add_argument("--step-interval", type=float, default=None,
                        help="LLMQ_BATCH_STEP_INTERVAL_S (default: llmq's own)")
    args = parser.parse_args(argv)
    r = run(args.lines, args.latency_ms, args.slots, args.window, args.workers, args.step_interval)
    print(f"{r['lines']:,} lines ({r['file_mb']:.1f} MB), mock {r['latency_ms']} ms, {r['slots']} slots in "
          f"{args.workers} worker process(es), window {r['window']}, a step every {r['step_interval_s']:g}s")
    print(f"upload and validation {r['upload_s']:.2f}s, API peak RSS growth {r['api_rss_growth_mb']:.1f} MB")
    print(f"batch {r['batch_s']:.1f}s ({r['completed']} completed, {r['failed']} failed), fed "
          f"{r['lines_fed_per_s']:.0f} lines/s, Redis peak growth {r['redis_peak_growth_mb']:.1f} MB, "
          f"{r['commands_per_line']:.2f} Redis commands per line (scripts' own not counted)")
    print(f"output {r['output_mb']:.1f} MB streamed in {r['output_stream_s']:.2f}s")
    verdict = "met" if r["ratio"] >= TARGET_RATIO else "MISSED"
    print(f"ceiling {r['ceiling_s']:.1f}s, ratio {r['ratio']:.3f} (≥ {TARGET_RATIO}: {verdict})")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "batch_api.json").write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()
