"""The file store: named byte objects that every API process and worker can reach, with an expiry.

Uploaded batch input files, batch output and error files, and the parts the batch runner writes on the
way live here, not in Redis. One `FileStore` sits on one backend (a directory or an S3-compatible bucket,
`llmq.worker.files.backend`) and lays its keys out the same way on both:

    objects/<name>                   the bytes
    meta/<name>                      {"size", "created_at", "expires_at"}: written last, so an object
                                     exists (stat, list) exactly when its meta does
    expiry/<expires_at:011d>/<name>  an empty marker, written first: the sweep's index, in expiry order

Writing is streamed (`async with store.writer(name) as w: await w.write(chunk) ...; await w.commit()`)
and atomic: readers see the whole object or none of it, and leaving the block without `commit` (an
exception, a refused upload) leaves nothing behind. A crash between the steps of a commit leaves at most
an invisible object whose marker is already in place, so the sweep removes it in due time. A process killed
mid-write (an API killed during an upload) leaves a temporary file or an S3 multipart upload, invisible to
readers; `sweep_abandoned` removes it once it is older than any write still under way could be.

Names are written once: the batch runner's parts and every file id are new names (`names.new_file_id`).
A store is used from one event loop (the API's, or a worker process's runtime loop).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from llmq.worker.files.backend import READ_CHUNK_BYTES, Backend, BlobWriter, ObjectNotFound
from llmq.worker.files.names import check_name, check_prefix

if TYPE_CHECKING:
    from llmq.worker.settings import Settings

OBJECTS, META, EXPIRY = "objects/", "meta/", "expiry/"
SWEEP_LIMIT = 500
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class LineTooLong(ValueError):
    """A line longer than the reader allows (a file that is not JSONL, or a runaway line)."""


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    created_at: int
    expires_at: int | None


@dataclass(frozen=True)
class SweepResult:
    deleted: int
    examined: int
    more: bool
    """True when the call stopped at its limit with expired markers left: call again."""


def _marker(expires_at: int, name: str) -> str:
    return f"{EXPIRY}{expires_at:011d}/{name}"


class ObjectWriter:
    """One object being written; see the module docstring. `size` counts the bytes written so far."""

    def __init__(self, store: FileStore, name: str) -> None:
        self.name = check_name(name)
        self.size = 0
        self.created_at = int(store.clock())
        self._store = store
        self._blob: BlobWriter | None = None
        self._committed = False

    async def __aenter__(self) -> ObjectWriter:
        self._blob = await self._store.backend.open_writer(OBJECTS + self.name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._committed:
            await self.abort()

    def _open(self) -> BlobWriter:
        if self._blob is None or self._committed:
            raise RuntimeError("write inside `async with store.writer(name)`, before commit")
        return self._blob

    async def write(self, data: bytes) -> None:
        blob = self._open()
        self.size += len(data)
        await blob.write(data)

    async def commit(self, expires_at: int | None = None) -> ObjectInfo:
        """Make the object visible under its name; `expires_at` (epoch seconds) lets the sweep delete it."""
        blob = self._open()
        backend = self._store.backend
        if expires_at is not None:
            await backend.put(_marker(expires_at, self.name), b"")
        await blob.commit()
        info = ObjectInfo(self.name, self.size, self.created_at, expires_at)
        meta = {"size": info.size, "created_at": info.created_at, "expires_at": info.expires_at}
        await backend.put(META + self.name, json.dumps(meta).encode())
        self._committed = True
        return info

    async def abort(self) -> None:
        if self._blob is not None and not self._committed:
            await self._blob.abort()


class FileStore:
    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock

    def writer(self, name: str) -> ObjectWriter:
        return ObjectWriter(self, name)

    async def stat(self, name: str) -> ObjectInfo | None:
        raw = await self.backend.get(META + check_name(name))
        if raw is None:
            return None
        meta = json.loads(raw)
        return ObjectInfo(name, int(meta["size"]), int(meta["created_at"]), meta.get("expires_at"))

    async def chunks(self, name: str, chunk_bytes: int = READ_CHUNK_BYTES, start: int = 0) -> AsyncIterator[bytes]:
        """The object's bytes from byte `start`, in chunks; raises ObjectNotFound before the first one."""
        async for chunk in self.backend.read(OBJECTS + check_name(name), chunk_bytes, start):
            yield chunk

    async def lines(
        self, name: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES, start: int = 0
    ) -> AsyncIterator[bytes]:
        """The object's lines from byte `start` (a line's first byte) without their `\\n`, a last unterminated
        one included; memory is one line."""
        pending = bytearray()
        async for chunk in self.chunks(name, start=start):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                if len(pending) + end - start > max_line_bytes:
                    raise LineTooLong(f"{name}: a line is over {max_line_bytes} bytes")
                if pending:
                    pending += chunk[start:end]
                    yield bytes(pending)
                    pending.clear()
                else:
                    yield chunk[start:end]
                start = end + 1
            pending += chunk[start:]
            if len(pending) > max_line_bytes:
                raise LineTooLong(f"{name}: a line is over {max_line_bytes} bytes")
        if pending:
            yield bytes(pending)

    async def delete(self, name: str) -> bool:
        """Remove the object; False if there was none."""
        info = await self.stat(name)
        # Meta first: from then on the object does not exist for anyone, whatever is left to clean up.
        await self.backend.delete(META + name)
        await self.backend.delete(OBJECTS + name)
        if info is not None and info.expires_at is not None:
            await self.backend.delete(_marker(info.expires_at, name))
        return info is not None

    async def names(self, prefix: str = "", start_after: str = "") -> AsyncIterator[str]:
        """Names of committed objects starting with `prefix`, in order (the batch runner lists its parts)."""
        check_prefix(prefix)
        after = META + start_after if start_after else ""
        async for key in self.backend.keys(META + prefix, after):
            yield key[len(META):]

    async def sweep_expired(self, now: float | None = None, limit: int = SWEEP_LIMIT) -> SweepResult:
        """Delete objects whose expiry has passed, looking at no more than `limit` markers."""
        now = self.clock() if now is None else now
        deleted = examined = 0
        async for key in self.backend.keys(EXPIRY):
            stamp, _, name = key[len(EXPIRY):].partition("/")
            if int(stamp) > now:
                return SweepResult(deleted, examined, more=False)
            if examined == limit:
                return SweepResult(deleted, examined, more=True)
            examined += 1
            info = await self.stat(name)
            # A marker whose object was written again with another expiry (or none) only goes itself.
            if info is None or (info.expires_at is not None and info.expires_at <= now):
                await self.backend.delete(META + name)
                await self.backend.delete(OBJECTS + name)  # also what a crash mid-commit left behind
                deleted += info is not None
            await self.backend.delete(key)
        return SweepResult(deleted, examined, more=False)

    async def sweep_abandoned(self, started_before: float, limit: int = SWEEP_LIMIT) -> int:
        """Remove what writes cut off with their process left, last written before `started_before`."""
        return await self.backend.remove_abandoned(started_before, limit)

    async def aclose(self) -> None:
        await self.backend.aclose()


def open_store(settings: Settings) -> FileStore:
    """The store the settings name: the S3-compatible bucket when `LLMQ_FILES_S3_URL` is set, else the directory."""
    if settings.files_s3_url:
        from llmq.worker.files.s3 import S3Backend  # botocore loads only where a bucket is configured

        secret = settings.files_s3_secret_access_key
        return FileStore(S3Backend(
            settings.files_s3_url,
            endpoint_url=settings.files_s3_endpoint_url,
            region=settings.files_s3_region,
            access_key_id=settings.files_s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            part_bytes=settings.files_s3_part_bytes,
        ))
    from llmq.worker.files.directory import DirectoryBackend

    return FileStore(DirectoryBackend(settings.files_dir))


__all__ = ["FileStore", "LineTooLong", "ObjectInfo", "ObjectNotFound", "ObjectWriter", "SweepResult", "open_store"]
