"""A file's record in Redis (its bytes are in the file store), and the `FileObject` callers see.

The hash is flat strings; `owner` is the key's fingerprint, as on jobs, and never leaves through the view.
The record expires with the file (`expires_at`), so an expired file is simply gone for everyone.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llmq.worker.batches.input_lines import InputSummary, LineProblem

# Purposes llmq makes or accepts: uploads are `batch`; a batch's results are `batch_output` (OpenAI's names).
UPLOAD_PURPOSE = "batch"
OUTPUT_PURPOSE = "batch_output"
MIN_RECORD_TTL_S = 60


def new_file_fields(
    file_id: str, owner: str, size: int, created_at: float, filename: str, purpose: str, expires_at: int | None,
    problems: list[LineProblem] | None = None, requests: int = 0, lines: int = 0, models: dict[str, int] | None = None,
) -> dict[str, str]:
    fields = {
        "id": file_id, "owner": owner, "bytes": str(size), "created_at": str(int(created_at)),
        "filename": filename, "purpose": purpose, "status": "processed", "requests": str(requests),
    }
    if expires_at is not None:
        fields["expires_at"] = str(expires_at)
    if problems:
        fields["problems"] = dumps_problems(problems)
    if lines:
        fields["lines"] = str(lines)
    if models:
        fields["models"] = json.dumps(models)
    return fields


def upload_fields(file_id: str, owner: str, size: int, created_at: float, filename: str, purpose: str,
                  expires_at: int | None, summary: InputSummary) -> dict[str, str]:
    """The record of an uploaded input file, with what the line check found (read again at batch creation)."""
    return new_file_fields(file_id, owner, size, created_at, filename, purpose, expires_at,
                           summary.first_problems, summary.requests, summary.lines, summary.models)


def record_ttl_s(expires_at: int | None, now: float | None = None, default_s: int = 30 * 24 * 3600) -> int:
    """The Redis TTL that makes the record go with its file."""
    now = time.time() if now is None else now
    if expires_at is None:
        return default_s
    return max(int(expires_at - now), MIN_RECORD_TTL_S)


def file_object(fields: dict[str, str]) -> dict[str, Any]:
    """OpenAI's `FileObject` (openai-python `types/file_object.py`)."""
    expires_at = fields.get("expires_at")
    return {
        "id": fields["id"],
        "object": "file",
        "bytes": int(fields["bytes"]),
        "created_at": int(fields["created_at"]),
        "filename": fields.get("filename", ""),
        "purpose": fields["purpose"],
        "status": fields.get("status", "processed"),
        "expires_at": int(expires_at) if expires_at else None,
        "status_details": None,
    }


def dumps_problems(problems: list[LineProblem]) -> str:
    return json.dumps([{"line": p.line, "code": p.code, "message": p.message} for p in problems])
