"""`llmq submit`: build a job from flags or a file, post it, optionally wait for the result."""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

from llmq.cli.context import Context
from llmq.cli.errors import CliError, ExitCode
from llmq.cli.jobs import finish_waiting


def parse_pairs(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    """`key=value` pairs; values are JSON when they parse (0.2, true, {"a":1}), plain strings otherwise."""
    result: dict[str, Any] = {}
    for pair in pairs or []:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise CliError(f"{flag} expects key=value, got {pair!r}", ExitCode.USAGE)
        try:
            result[name.strip()] = json.loads(raw)
        except ValueError:
            result[name.strip()] = raw
    return result


def read_json_file(path: str) -> Any:
    """A JSON document from a file, or from stdin for `-`."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise CliError(f"cannot read {path}: {err.strerror or err}", ExitCode.USAGE) from None
    try:
        return json.loads(text)
    except ValueError as err:
        raise CliError(f"{'stdin' if path == '-' else path} is not valid JSON: {err}", ExitCode.USAGE) from None


def build_job(args: argparse.Namespace) -> dict[str, Any]:
    """The POST /v1/jobs body: from --file (a chat body or a whole job), or from --model/--message."""
    if args.file:
        if args.message or args.system:
            raise CliError("give the messages either in --file or with --message/--system, not both", ExitCode.USAGE)
        data = read_json_file(args.file)
        if not isinstance(data, dict):
            raise CliError("--file must hold a JSON object: a chat request, or a job with a \"request\" key",
                           ExitCode.USAGE)
        job = dict(data) if "request" in data else {"request": data}
        if not isinstance(job["request"], dict):
            raise CliError("the \"request\" of --file must be a JSON object (a chat request)", ExitCode.USAGE)
        request = dict(job["request"])
    else:
        if not args.model or not args.message:
            raise CliError("submit needs --model and at least one --message (or --file request.json)", ExitCode.USAGE)
        messages = [{"role": "system", "content": text} for text in args.system or []]
        messages += [{"role": "user", "content": text} for text in args.message]
        job, request = {}, {"messages": messages}
    if args.model:
        request["model"] = args.model
    if args.stream:
        request["stream"] = True
    request.update(parse_pairs(args.param, "--param"))
    job["request"] = request
    metadata = parse_pairs(args.metadata, "--metadata")
    if metadata:
        job["metadata"] = {**(job.get("metadata") or {}), **metadata}
    for name in ("priority", "environment", "max_attempts", "deadline", "callback_url", "callback_secret"):
        value = getattr(args, name)
        if value is not None:
            job[name] = value
    return job


def run(ctx: Context, args: argparse.Namespace) -> int:
    job_body = build_job(args)
    # Always sent: a submission retried after a lost answer then returns the same job instead of a second one.
    idempotency_key = args.idempotency_key or f"llmq-cli-{uuid.uuid4()}"
    with ctx.client() as client:
        job, replayed = client.submit(job_body, idempotency_key)
        if replayed and args.idempotency_key:
            ctx.out.note(f"llmq: idempotency key already used: this is the earlier job {job['id']}")
        if args.wait is not None:
            return finish_waiting(ctx, client.wait(job["id"], args.wait))
    if args.json:
        ctx.out.json(job)
    else:
        ctx.out.line(job["id"])
    return ExitCode.OK
