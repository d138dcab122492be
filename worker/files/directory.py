"""The file store in a local (or shared, e.g. NFS) directory: the default, and the local run's.

Each blob is written to a temporary file beside its final path, fsynced, and renamed over it, then the
directory is fsynced: a crash leaves either the old blob or the new one, never a torn one. Blocking file
calls run in a thread (`asyncio.to_thread`), and writes are gathered into `WRITE_BUFFER_BYTES` first, so
the event loop of the API or the worker never waits on the disk and pays one thread hop per megabyte.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

from llmq.worker.files.backend import READ_CHUNK_BYTES, ObjectNotFound

WRITE_BUFFER_BYTES = 1024 * 1024
FILE_MODE = 0o640


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_beside(path: Path) -> Path:
    # A leading dot: no checked name starts with one, so listings skip it and nothing can be called that.
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def _open_temp(path: Path) -> tuple[Path, BinaryIO]:
    temp = _temp_beside(path)
    for attempt in range(3):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
            return temp, os.fdopen(fd, "wb")  # buffered: its write() writes everything, unlike a raw one
        except FileNotFoundError:  # a delete pruned the folder just made empty: make it again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _publish(temp: Path, handle: BinaryIO, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(temp, path)
    _fsync_dir(path.parent)


def _discard(temp: Path, handle: BinaryIO) -> None:
    handle.close()
    temp.unlink(missing_ok=True)


class DirectoryWriter:
    def __init__(self, temp: Path, handle: BinaryIO, path: Path) -> None:
        self._temp, self._handle, self._path = temp, handle, path
        self._buffer = bytearray()
        self._done = False

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= WRITE_BUFFER_BYTES:
            await self._flush()

    async def _flush(self) -> None:
        if self._buffer:
            block, self._buffer = bytes(self._buffer), bytearray()
            await asyncio.to_thread(self._handle.write, block)

    async def commit(self) -> None:
        await self._flush()
        await asyncio.to_thread(_publish, self._temp, self._handle, self._path)
        self._done = True

    async def abort(self) -> None:
        if not self._done:
            self._done = True
            self._buffer = bytearray()
            await asyncio.to_thread(_discard, self._temp, self._handle)


class DirectoryBackend:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()

    def _path(self, key: str) -> Path:
        return self.root / key  # keys are built from checked names: no `..`, no leading `/`

    async def open_writer(self, key: str) -> DirectoryWriter:
        path = self._path(key)
        temp, handle = await asyncio.to_thread(_open_temp, path)
        return DirectoryWriter(temp, handle, path)

    async def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES, start: int = 0) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(open, self._path(key), "rb", buffering=0)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ObjectNotFound(key) from None
        try:
            if start:
                handle.seek(start)
            while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
                yield chunk
        finally:
            handle.close()

    async def put(self, key: str, data: bytes) -> None:
        def put() -> None:
            path = self._path(key)
            temp, handle = _open_temp(path)
            try:
                handle.write(data)
                _publish(temp, handle, path)
            except BaseException:
                _discard(temp, handle)
                raise

        await asyncio.to_thread(put)

    async def get(self, key: str) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(key).read_bytes)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    async def delete(self, key: str) -> None:
        def delete() -> None:
            path = self._path(key)
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
                return
            # Empty folders left by the last of their objects go too (expiry folders would pile up), up to
            # the store's own top folders.
            parent = path.parent
            while parent.parent != self.root and parent != self.root:
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

        await asyncio.to_thread(delete)

    async def keys(self, prefix: str, start_after: str = "") -> AsyncIterator[str]:
        # Walk the one folder holding the prefix, lazily and in key order, a folder listing per thread hop.
        base, _, leaf = prefix.rpartition("/")
        folder = self._path(base) if base else self.root
        for key in await asyncio.to_thread(_sorted_level, folder, base, leaf):
            async for found in self._walk(key):
                if found > start_after:
                    yield found

    async def _walk(self, key: str) -> AsyncIterator[str]:
        if not key.endswith("/"):
            yield key
            return
        for child in await asyncio.to_thread(_sorted_level, self._path(key), key.rstrip("/"), ""):
            async for found in self._walk(child):
                yield found

    async def remove_abandoned(self, started_before: float, limit: int) -> int:
        # A killed writer's temporary file: its mtime is its last flushed write (every `WRITE_BUFFER_BYTES`).
        return await asyncio.to_thread(_remove_temps, self.root, started_before, limit)

    async def aclose(self) -> None:
        return None


def _remove_temps(root: Path, started_before: float, limit: int) -> int:
    removed = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            path = Path(folder) / name
            try:
                if path.stat().st_mtime >= started_before:
                    continue
                path.unlink()
            except FileNotFoundError:  # committed or aborted meanwhile
                continue
            removed += 1
            if removed == limit:
                return removed
    return removed


def _sorted_level(folder: Path, base: str, leaf_prefix: str) -> list[str]:
    """Entries of one folder as keys (folders end in `/`), sorted as their keys would be."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    keys = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.startswith(leaf_prefix):
            continue
        key = f"{base}/{entry.name}" if base else entry.name
        keys.append(key + "/" if entry.is_dir(follow_symlinks=False) else key)
    return sorted(keys)
