"""Search every Redis value (broker messages decoded) and every log file for secrets."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import redis


def _decoded_messages(value: str) -> Iterator[str]:
    """Kombu keeps message bodies base64-encoded inside a JSON envelope: look inside too."""
    try:
        envelope = json.loads(value)
    except ValueError:
        return
    candidates = envelope if isinstance(envelope, list) else [envelope]
    for item in candidates:
        if isinstance(item, dict) and isinstance(item.get("body"), str):
            with contextlib.suppress(ValueError):
                yield base64.b64decode(item["body"]).decode(errors="replace")


def redis_values(url: str) -> Iterator[tuple[str, str]]:
    # Other tests store bytes that are not UTF-8 on purpose (damaged records): read them, do not fail on them.
    client = redis.Redis.from_url(url, decode_responses=True, encoding_errors="replace")
    try:
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            values: list[str] = [key]
            if kind == "string":
                values.append(client.get(key) or "")
            elif kind == "hash":
                values += [v for pair in client.hgetall(key).items() for v in pair]
            elif kind == "list":
                values += client.lrange(key, 0, -1)
            elif kind == "set":
                values += list(client.smembers(key))
            elif kind == "zset":
                values += client.zrange(key, 0, -1)
            elif kind == "stream":
                values += [json.dumps(fields) for _, fields in client.xrange(key)]
            for value in values:
                yield key, value
                for decoded in _decoded_messages(value):
                    yield key, decoded
    finally:
        client.close()


def leaks_in_redis(url: str, secrets: list[str]) -> list[str]:
    return [f"{key}: contains {secret[:4]}…" for key, value in redis_values(url) for secret in secrets
            if secret in value]


def leaks_in_logs(log_dir: Path, secrets: list[str]) -> list[str]:
    found = []
    for path in log_dir.rglob("*.log"):
        text = path.read_text(errors="replace")
        found += [f"{path.name}: contains {secret[:4]}…" for secret in secrets if secret in text]
    return found


def count_values(url: str) -> int:
    return sum(1 for _ in redis_values(url))
