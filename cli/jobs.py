"""`llmq get` and `llmq cancel`, and how a waited-for job becomes an exit code."""

from __future__ import annotations

import argparse
from typing import Any

from llmq.cli.context import Context
from llmq.cli.errors import TERMINAL, ExitCode, exit_for_status


def finish_waiting(ctx: Context, job: dict[str, Any]) -> int:
    """Print the job; the exit code says how it ended (or that it had not ended yet)."""
    ctx.out.json(job)
    status = job.get("status")
    if status == "failed":
        error = job.get("error") or {}
        ctx.out.error(f"job {job.get('id')} failed: {error.get('type', 'error')}: {error.get('message', '')}")
    elif status == "cancelled":
        ctx.out.error(f"job {job.get('id')} was cancelled")
    elif status == "expired":
        error = job.get("error") or {}
        ctx.out.error(f"job {job.get('id')} expired at its deadline {job.get('deadline')}: {error.get('message', '')}")
    elif status not in TERMINAL:
        ctx.out.error(f"job {job.get('id')} is still {status}: stopped waiting")
    return exit_for_status(status)


def get(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.client() as client:
        if args.wait is None:
            ctx.out.json(client.get(args.job_id))
            return ExitCode.OK
        return finish_waiting(ctx, client.wait(args.job_id, args.wait))


def cancel(ctx: Context, args: argparse.Namespace) -> int:
    with ctx.client() as client:
        ctx.out.json(client.cancel(args.job_id))
    return ExitCode.OK
