"""`llmq batch --batch-api`: the file runs as one OpenAI batch through `/v1/files` and `/v1/batches`.

The guarantees of `llmq batch` hold: bad lines are reported here and left out of the upload (the API would
fail the whole batch for one), and running the same file again finds its batch (by the digest of the lines
sent, kept in the batch's metadata) instead of creating new work. The progress bar follows `request_counts`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmq.cli.batch import CHAT_URLS, Item, write_jsonl
from llmq.cli.client import ApiClient
from llmq.cli.context import Context
from llmq.cli.errors import ExitCode

DIGEST_KEY = "llmq_cli_sha256"
POLL_S = 1.0
FINISHED = ("completed", "failed", "expired", "cancelled")
REUSABLE = ("validating", "in_progress", "finalizing", "completed")


def batch_lines(items: list[Item]) -> bytes:
    """The valid lines in the API's strict form (the CLI also accepts lines without custom_id or url)."""
    return "".join(json.dumps({"custom_id": item.custom_id, "method": "POST", "url": CHAT_URLS[0],
                               "body": item.body}, ensure_ascii=False, separators=(",", ":")) + "\n"
                   for item in items).encode()


def find_or_create(client: ApiClient, content: bytes, filename: str, metadata: dict[str, str],
                   base: str = "/v1") -> dict[str, Any]:
    digest = hashlib.sha256(content).hexdigest()
    for batch in client.batches():
        if (batch.get("metadata") or {}).get(DIGEST_KEY) == digest and batch["status"] in REUSABLE:
            return batch
    uploaded = client.upload_batch_file(filename, content, base)
    return client.create_batch({"input_file_id": uploaded["id"], "endpoint": CHAT_URLS[0],
                                "completion_window": "24h", "metadata": {**metadata, DIGEST_KEY: digest}}, base)


def run_batch_api(ctx: Context, args: argparse.Namespace, items: list[Item], output: Path,
                  metadata: dict[str, Any]) -> int:
    """Lines run at priority low with the configured attempts; `--environment` picks the base path."""
    valid = [item for item in items if item.invalid is None]
    base = f"/{args.environment}/v1" if args.environment else "/v1"
    # OpenAI's metadata values are strings.
    pairs = {key: value if isinstance(value, str) else json.dumps(value) for key, value in metadata.items()}
    deadline = time.monotonic() + (args.wait_timeout or math.inf)
    with ctx.client() as client:
        batch = find_or_create(client, batch_lines(valid), Path(args.file).name or "batch.jsonl", pairs, base)
        bar = tqdm(total=len(valid), desc=batch["id"], unit="line", file=sys.stderr,
                   disable=True if args.no_progress else None)
        while batch["status"] not in FINISHED and time.monotonic() < deadline:
            time.sleep(POLL_S)
            batch = client.get_batch(batch["id"])
            counts = batch.get("request_counts") or {}
            bar.update(counts.get("completed", 0) + counts.get("failed", 0) - bar.n)
        bar.close()
        results: dict[str, dict[str, Any]] = {}
        for file_id in (batch.get("output_file_id"), batch.get("error_file_id")):
            if file_id:
                for line in client.file_lines(file_id):
                    record = json.loads(line)
                    results[record["custom_id"]] = record
    records = [results.get(item.custom_id) or {"id": None, "custom_id": item.custom_id, "response": None,
                                                 "error": item.failure()} for item in items]
    write_jsonl(output, records)
    succeeded = sum(1 for r in records if r.get("response") and r["response"].get("status_code") == 200)
    counts = {"output": str(output), "batch": batch["id"], "status": batch["status"], "total": len(items),
              "succeeded": succeeded, "failed": len(records) - succeeded,
              "invalid": sum(item.invalid is not None for item in items)}
    ctx.out.json(counts)
    if batch["status"] not in FINISHED:
        ctx.out.error(f"batch {batch['id']} is still {batch['status']}; run the same command again to collect it")
        return ExitCode.TIMED_OUT
    return ExitCode.OK if succeeded == len(items) else ExitCode.FAILED
