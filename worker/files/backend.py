"""What a place that holds bytes must offer the file store: the protocol both backends implement.

The store (`llmq.worker.files.store`) keeps its bookkeeping, expiry and line reading on top of these few
operations, so a directory and an S3 bucket behave the same way and are tested by the same table.

Keys are the store's own (`objects/…`, `meta/…`, `expiry/…`), built from checked names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

READ_CHUNK_BYTES = 1024 * 1024


class ObjectNotFound(KeyError):
    """No object under that name (never written, not yet committed, deleted or expired)."""


class BlobWriter(Protocol):
    """Bytes streamed in; nothing is visible under the key until `commit`, and `abort` leaves nothing behind."""

    async def write(self, data: bytes) -> None: ...

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...


class Backend(Protocol):
    async def open_writer(self, key: str) -> BlobWriter: ...

    def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES, start: int = 0) -> AsyncIterator[bytes]:
        """The blob from byte `start` in chunks of at most `chunk_bytes`; raises ObjectNotFound before the first
        chunk. A `start` at or past the end gives no chunk."""
        ...

    async def put(self, key: str, data: bytes) -> None:
        """A small blob, replaced atomically."""
        ...

    async def get(self, key: str) -> bytes | None: ...

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""
        ...

    def keys(self, prefix: str, start_after: str = "") -> AsyncIterator[str]:
        """Keys under `prefix`, in lexicographic order, after `start_after`."""
        ...

    async def remove_abandoned(self, started_before: float, limit: int) -> int:
        """Remove what writes left that were never committed nor aborted (their process died mid-write), if their
        last write is older than `started_before` (epoch seconds); at most `limit` of them, and how many."""
        ...

    async def aclose(self) -> None: ...
