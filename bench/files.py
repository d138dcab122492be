"""`python -m llmq.bench.files`: a 50,000-line batch file uploaded, parsed and stored on each file store backend.

The file (realistic chat requests, generated) is sent through `receive_upload` as a multipart body in
64 KiB chunks, the size uvicorn hands a route, into the directory store and into an S3-compatible bucket
(moto's server on loopback), then read back line by line. Reported per backend: seconds and MB/s for the
upload (parse, line checks, store) and for reading it back, and the peak growth of this process's RSS
while uploading, sampled at every chunk. The HTTP hop is not included: the route is not built yet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psutil

from llmq.api.uploads import UploadRules, receive_upload
from llmq.bench.stack import LOG_DIR, RESULTS_DIR
from llmq.devstack.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, clean_aws_environment
from llmq.worker.files.backend import Backend
from llmq.worker.files.directory import DirectoryBackend
from llmq.worker.files.names import new_file_id
from llmq.worker.files.s3 import S3Backend
from llmq.worker.files.store import FileStore

CHUNK_BYTES = 64 * 1024
BOUNDARY = "llmq-bench-boundary"
MB = 1_000_000
TOPICS = ["把下面这段话翻译成英文", "Summarise the following support ticket in two sentences",
          "给这条用户评论打一个情感标签（正面/负面/中性）", "Extract every date and amount from this invoice text",
          "判断这道数学题的解答是否正确，并说明理由"]
FILLER = ("The customer reports that the order arrived late and one item was missing; they ask for a refund "
          "or a replacement. 订单延迟送达，缺少一件商品，客户要求退款或补发。")


def batch_line(rng: random.Random, index: int) -> bytes:
    body = {
        "model": rng.choice(["gpt-4o-mini", "gpt-4o", "qwen-max"]),
        "messages": [
            {"role": "system", "content": "You are a careful assistant for an education company. 回答要简洁。"},
            {"role": "user", "content": f"{rng.choice(TOPICS)}:\n{FILLER * rng.randint(1, 6)} #{index}"},
        ],
        "temperature": round(rng.random(), 2),
        "max_tokens": rng.choice([256, 512, 1024]),
    }
    line = {"custom_id": f"request-{index:06d}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


def write_batch_file(path: Path, lines: int) -> int:
    rng = random.Random(22)
    with path.open("wb") as out:
        for index in range(lines):
            out.write(batch_line(rng, index))
    return path.stat().st_size


def multipart_head() -> bytes:
    fields = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (("purpose", "batch"), ("expires_after[anchor]", "created_at"),
                            ("expires_after[seconds]", "86400"))
    )
    return fields + (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="batch.jsonl"\r\n'
                     "Content-Type: application/jsonl\r\n\r\n").encode()


async def body_from(path: Path, sample: Callable[[], None]) -> AsyncIterator[bytes]:
    yield multipart_head()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK_BYTES):
            sample()
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


async def measure(make_backend: Callable[[], Backend], path: Path, size: int) -> dict[str, Any]:
    store = FileStore(make_backend())
    await store.stat("warm-up")  # the client and its service model are made once per process, not per file
    process = psutil.Process()
    baseline = peak = process.memory_info().rss

    def sample() -> None:
        nonlocal peak
        peak = max(peak, process.memory_info().rss)

    name = new_file_id()
    started = time.perf_counter()
    uploaded = await receive_upload(f"multipart/form-data; boundary={BOUNDARY}", body_from(path, sample), store,
                                    name, UploadRules(max_file_bytes=200 * 1024 * 1024))
    upload_s = time.perf_counter() - started
    started = time.perf_counter()
    lines = 0
    async for _ in store.lines(name):
        lines += 1
    read_s = time.perf_counter() - started
    await store.delete(name)
    await store.aclose()
    assert uploaded.stored.size == size and uploaded.lines.valid and lines == uploaded.lines.requests
    return {"upload_s": upload_s, "upload_mb_s": size / MB / upload_s, "read_lines_s": read_s,
            "read_mb_s": size / MB / read_s, "rss_growth_mb": (peak - baseline) / MB, "requests": lines}


def run(lines: int) -> dict[str, Any]:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="llmq-bench-files-") as scratch:
        path = Path(scratch) / "batch.jsonl"
        size = write_batch_file(path, lines)
        results: dict[str, Any] = {"lines": lines, "file_mb": size / MB}
        results["directory"] = asyncio.run(measure(lambda: DirectoryBackend(Path(scratch) / "store"), path, size))
        with S3Server(LOG_DIR / "files-s3.log") as server, clean_aws_environment():
            server.create_bucket("llmq-bench")
            results["s3"] = asyncio.run(measure(lambda: S3Backend(
                "s3://llmq-bench/files", endpoint_url=server.endpoint_url, region=REGION,
                access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY), path, size))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.files", description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=50_000, help="lines in the generated batch file")
    args = parser.parse_args(argv)
    results = run(args.lines)
    print(f"{results['lines']:,} lines, {results['file_mb']:.1f} MB, streamed in {CHUNK_BYTES // 1024} KiB chunks")
    print(f"{'backend':<10} {'upload s':>9} {'MB/s':>7} {'read lines s':>13} {'MB/s':>7} {'RSS growth MB':>14}")
    for backend in ("directory", "s3"):
        r = results[backend]
        print(f"{backend:<10} {r['upload_s']:>9.2f} {r['upload_mb_s']:>7.1f} {r['read_lines_s']:>13.2f} "
              f"{r['read_mb_s']:>7.1f} {r['rss_growth_mb']:>14.1f}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "files.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
