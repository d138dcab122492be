"""A batch as it lives in Redis, and the `Batch` object callers see (openai-python `types/batch.py`).

Statuses run validating → in_progress → finalizing → completed, or end failed (invalid input), expired (the
window ended) or cancelling → cancelled. `ending` (expired | cancelled) is what a batch that stops early will
end as once its lines in flight are drained and its files written.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

BATCH_ID_PREFIX = "batch_"
UNFINISHED: tuple[str, ...] = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
# Timestamps of the record, each set once when its status is reached.
TIMESTAMPS = ("in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at",
              "cancelled_at")
USAGE_FIELDS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens")
MAX_ERRORS_SHOWN = 100


def new_batch_id() -> str:
    """96 random bits as hex: unguessable, and a valid file store name segment (the parts live under it)."""
    return BATCH_ID_PREFIX + secrets.token_hex(12)


def _int(fields: dict[str, str], name: str) -> int | None:
    value = fields.get(name)
    return int(float(value)) if value else None


def usage_of(fields: dict[str, str]) -> dict[str, Any]:
    n = {name: int(fields.get(name) or 0) for name in USAGE_FIELDS}
    return {
        "input_tokens": n["input_tokens"], "input_tokens_details": {"cached_tokens": n["cached_tokens"]},
        "output_tokens": n["output_tokens"], "output_tokens_details": {"reasoning_tokens": n["reasoning_tokens"]},
        "total_tokens": n["total_tokens"],
    }


def batch_object(fields: dict[str, str]) -> dict[str, Any]:
    """OpenAI's `Batch`, every field filled from the record."""
    errors = json.loads(fields["errors"]) if fields.get("errors") else None
    view: dict[str, Any] = {
        "id": fields["id"],
        "object": "batch",
        "endpoint": fields["endpoint"],
        "input_file_id": fields["input_file_id"],
        "completion_window": fields["completion_window"],
        "status": fields["status"],
        "created_at": _int(fields, "created_at"),
        "expires_at": _int(fields, "expires_at"),
        "output_file_id": fields.get("output_file_id") or None,
        "error_file_id": fields.get("error_file_id") or None,
        "errors": {"object": "list", "data": errors} if errors else None,
        "request_counts": {
            "total": int(fields.get("total") or 0),
            "completed": int(fields.get("completed") or 0),
            "failed": int(fields.get("failed") or 0),
        },
        "metadata": json.loads(fields["metadata"]) if fields.get("metadata") else None,
        "model": fields.get("model") or None,
        "usage": usage_of(fields),
    }
    for name in TIMESTAMPS:
        view[name] = _int(fields, name)
    return view
