"""`llmq batch`: run a JSONL file of chat requests (OpenAI Batch API form) and write the results as JSONL."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmq.cli.context import Context
from llmq.cli.errors import TERMINAL, ApiError, CliError, ExitCode
from llmq.cli.submit import parse_pairs

ROLES = ("system", "developer", "user", "assistant", "tool", "function")
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
MAX_IDEMPOTENCY_KEY = 255  # the API's limit on the header


@dataclass
class Item:
    """One input line and what became of it."""

    line: int
    custom_id: str
    body: dict[str, Any] | None = None
    invalid: str | None = None
    job_id: str | None = None
    job: dict[str, Any] | None = None
    error: dict[str, str] | None = None  # a rejection by the API, or the job's own error

    def record(self) -> dict[str, Any]:
        """The output line, in OpenAI's batch output form."""
        job = self.job or {}
        if job.get("status") == "succeeded":
            response = {"status_code": 200, "request_id": self.job_id, "body": job.get("result")}
            return {"id": self.job_id, "custom_id": self.custom_id, "response": response, "error": None}
        return {"id": self.job_id, "custom_id": self.custom_id, "response": None, "error": self.failure()}

    def failure(self) -> dict[str, str]:
        if self.invalid is not None:
            return {"code": "invalid_request", "message": self.invalid}
        if self.error is not None:
            return self.error
        status = (self.job or {}).get("status")
        if status == "failed":
            error = (self.job or {}).get("error") or {}
            return {"code": str(error.get("type") or "failed"), "message": str(error.get("message") or "")}
        if status == "cancelled":
            return {"code": "cancelled", "message": "the job was cancelled"}
        if status == "expired":
            error = (self.job or {}).get("error") or {}
            return {"code": "expired", "message": str(error.get("message") or "its deadline passed")}
        return {"code": "timeout", "message": f"the job was still {status or 'unsubmitted'} when waiting stopped; "
                                              "run the same batch again to collect it"}


def chat_problem(body: Any) -> str | None:
    """What is wrong with a chat request, naming the field; None when it can be submitted."""
    if not isinstance(body, dict):
        return "body must be a JSON object (a chat completions request)"
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return "body.model is missing (a model name as the proxy knows it)"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "body.messages must be a non-empty list"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"body.messages[{index}] must be an object"
        if message.get("role") not in ROLES:
            return f"body.messages[{index}].role must be one of {', '.join(ROLES)}"
    return None


def parse_line(number: int, text: str) -> Item:
    """A batch request line (`custom_id`, `method`, `url`, `body`) or a bare chat body (custom_id = line number)."""
    fallback = str(number)
    try:
        data = json.loads(text)
    except ValueError as err:
        return Item(number, fallback, invalid=f"line {number}: not valid JSON ({err})")
    if not isinstance(data, dict):
        return Item(number, fallback, invalid=f"line {number}: must be a JSON object")
    if "body" not in data and "custom_id" not in data:
        problem = chat_problem(data)
        return Item(number, fallback, data if problem is None else None,
                    invalid=None if problem is None else f"line {number}: {problem}")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Item(number, fallback, invalid=f"line {number}: custom_id must be a non-empty string")
    if data.get("method", "POST") != "POST":
        return Item(number, custom_id, invalid=f"line {number}: method must be POST")
    if data.get("url", CHAT_URLS[0]) not in CHAT_URLS:
        return Item(number, custom_id, invalid=f"line {number}: url must be {CHAT_URLS[0]} (got {data['url']!r})")
    problem = chat_problem(data.get("body"))
    if problem is not None:
        return Item(number, custom_id, invalid=f"line {number}: {problem}")
    return Item(number, custom_id, data["body"])


def parse_input(text: str) -> list[Item]:
    """Every non-blank line, in order; repeated custom_ids are invalid (results are matched by them)."""
    items: list[Item] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        item = parse_line(number, raw.strip())
        if item.invalid is None and item.custom_id in seen:
            item.body = None
            item.invalid = f"line {number}: custom_id {item.custom_id!r} repeats line {seen[item.custom_id]}"
        seen.setdefault(item.custom_id, number)
        items.append(item)
    return items


def idempotency_key(file_sha: str, custom_id: str) -> str:
    """Same file, same line: same job, so running a batch again never duplicates its jobs."""
    key = f"batch-{file_sha}-{custom_id}"
    if len(key) > MAX_IDEMPOTENCY_KEY:
        key = f"batch-{file_sha}-{hashlib.sha256(custom_id.encode()).hexdigest()}"
    return key


def default_output(source: str) -> Path:
    path = Path(source)
    return path.with_name(f"{path.stem}.out.jsonl")


def read_input(source: str) -> bytes:
    try:
        return sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    except OSError as err:
        raise CliError(f"cannot read {source}: {err.strerror or err}", ExitCode.USAGE) from None


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    """Written to a temporary file first, so an interrupted run never leaves half an output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def run_all(items: list[Item], work: Callable[[Item], None], concurrency: int, bar: tqdm) -> None:
    """`work` on every item, `concurrency` at a time; the first error (the API unreachable) stops the run."""
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        for future in as_completed([pool.submit(work, item) for item in items]):
            future.result()
            bar.update(1)
    finally:
        # On an error, what has not started is dropped rather than run against a dead API.
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


def run(ctx: Context, args: argparse.Namespace) -> int:
    if args.file == "-" and not args.output:
        raise CliError("reading the batch from stdin needs -o OUT.jsonl", ExitCode.USAGE)
    raw = read_input(args.file)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise CliError(f"{args.file} is not UTF-8 text ({err.reason} at byte {err.start})", ExitCode.USAGE) from None
    file_sha = hashlib.sha256(raw).hexdigest()
    items = parse_input(text)
    if not items:
        raise CliError(f"{args.file} has no requests", ExitCode.USAGE)
    output = Path(args.output) if args.output else default_output(args.file)
    for item in items:
        if item.invalid:
            ctx.out.error(item.invalid)
    extra = {name: getattr(args, name) for name in ("priority", "environment", "max_attempts", "deadline")
             if getattr(args, name) is not None}
    metadata = parse_pairs(args.metadata, "--metadata")
    if args.batch_api:
        from llmq.cli.batch_api import run_batch_api  # imported late: it imports this module

        return run_batch_api(ctx, args, items, output, metadata)
    deadline = time.monotonic() + (args.wait_timeout or math.inf)
    valid = [item for item in items if item.invalid is None]

    progress = {"file": sys.stderr, "unit": "job", "disable": True if args.no_progress else None}
    with ctx.client(max_connections=args.concurrency) as client:

        def submit(item: Item) -> None:
            assert item.body is not None
            job = {"request": item.body, "metadata": {**metadata, "custom_id": item.custom_id}, **extra}
            try:
                answer, _ = client.submit(job, idempotency_key(file_sha, item.custom_id))
            except ApiError as err:
                if err.code == ExitCode.UNREACHABLE:
                    raise
                item.error = {"code": err.error_type, "message": err.api_message}
                return
            item.job_id, item.job = answer["id"], answer

        def wait(item: Item) -> None:
            remaining = deadline - time.monotonic()
            if item.job_id is None or (item.job or {}).get("status") in TERMINAL or remaining <= 0:
                return
            try:
                item.job = client.wait(item.job_id, remaining)
            except ApiError as err:
                if err.code == ExitCode.UNREACHABLE:
                    raise
                item.error = {"code": err.error_type, "message": err.api_message}

        run_all(valid, submit, args.concurrency, tqdm(total=len(valid), desc="submitted", **progress))
        submitted = [item for item in valid if item.job_id is not None]
        run_all(submitted, wait, args.concurrency, tqdm(total=len(submitted), desc="finished", **progress))
    write_jsonl(output, (item.record() for item in items))
    return summarize(ctx, items, output)


def summarize(ctx: Context, items: list[Item], output: Path) -> int:
    statuses = [(item.job or {}).get("status") for item in items]
    counts = {
        "total": len(items),
        "succeeded": statuses.count("succeeded"),
        "failed": statuses.count("failed"),
        "cancelled": statuses.count("cancelled"),
        "expired": statuses.count("expired"),
        "invalid": sum(item.invalid is not None for item in items),
        "rejected": sum(item.error is not None for item in items),
        "unfinished": sum(item.job_id is not None and item.error is None and status not in TERMINAL
                          for item, status in zip(items, statuses, strict=True)),
    }
    ctx.out.json({"output": str(output), **counts})
    if counts["unfinished"]:
        ctx.out.error(f"{counts['unfinished']} job(s) still unfinished; run the same command again to collect them")
        return ExitCode.TIMED_OUT
    return ExitCode.OK if counts["succeeded"] == counts["total"] else ExitCode.FAILED

