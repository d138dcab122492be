"""The file store's contract, run on both backends: streamed atomic writes, reads, lines, delete, expiry."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from llmq.worker.files.backend import Backend, ObjectNotFound
from llmq.worker.files.directory import DirectoryBackend, DirectoryWriter
from llmq.worker.files.names import InvalidName, new_file_id
from llmq.worker.files.s3 import MIN_PART_BYTES, S3Backend, S3Writer
from llmq.worker.files.store import FileStore, LineTooLong, ObjectInfo

from .conftest import MakeBackend

NOW = 1_800_000_000


def run(make_backend: MakeBackend, scenario: Callable[[FileStore], Awaitable[Any]], clock: float = NOW) -> Any:
    async def main() -> Any:
        store = FileStore(make_backend(), clock=lambda: clock)
        try:
            return await scenario(store)
        finally:
            await store.aclose()

    return asyncio.run(main())


async def everything_stored(backend: Backend) -> list[str]:
    """Every blob, temporary file and unfinished multipart upload the backend holds."""
    if isinstance(backend, DirectoryBackend):
        if not backend.root.exists():
            return []
        return sorted(str(p.relative_to(backend.root)) for p in backend.root.rglob("*") if p.is_file())
    assert isinstance(backend, S3Backend)
    client = await backend._s3()
    uploads = await client.list_multipart_uploads(Bucket=backend.bucket)
    return [key async for key in backend.keys("")] + [u["Key"] for u in uploads.get("Uploads", ())]


async def read(store: FileStore, name: str) -> bytes:
    return b"".join([chunk async for chunk in store.chunks(name)])


async def store_bytes(store: FileStore, name: str, data: bytes, expires_at: int | None = None,
                      chunk: int = 65_536) -> ObjectInfo:
    async with store.writer(name) as writer:
        for start in range(0, len(data), chunk):
            await writer.write(data[start:start + chunk])
        return await writer.commit(expires_at=expires_at)


@pytest.mark.parametrize("size", [0, 1, 100_000, 2 * MIN_PART_BYTES + 12_345])  # the last is a 3-part upload
def test_streamed_write_reads_back_whole(make_backend: MakeBackend, size: int) -> None:
    data = os.urandom(size)

    async def scenario(store: FileStore) -> None:
        info = await store_bytes(store, "file-a", data, expires_at=NOW + 60)
        assert info == ObjectInfo("file-a", size, NOW, NOW + 60)
        assert await store.stat("file-a") == info
        assert await read(store, "file-a") == data
        assert [n async for n in store.names()] == ["file-a"]

    run(make_backend, scenario)


def test_nothing_is_visible_before_commit(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> None:
        async with store.writer("file-b") as writer:
            await writer.write(b"x" * (MIN_PART_BYTES + 1))
            assert await store.stat("file-b") is None
            assert [n async for n in store.names()] == []
            with pytest.raises(ObjectNotFound):
                await read(store, "file-b")
            await writer.commit()
        assert (await store.stat("file-b")) is not None

    run(make_backend, scenario)


@pytest.mark.parametrize("size", [10, MIN_PART_BYTES + 10])  # a single PUT, and a multipart upload under way
def test_leaving_without_commit_leaves_nothing(make_backend: MakeBackend, size: int) -> None:
    async def scenario(store: FileStore) -> list[str]:
        with pytest.raises(RuntimeError, match="refused"):
            async with store.writer("file-c") as writer:
                await writer.write(b"y" * size)
                raise RuntimeError("refused")
        async with store.writer("file-d") as writer:
            await writer.write(b"z")  # and no commit at all
        assert await store.stat("file-c") is None
        return await everything_stored(store.backend)

    assert run(make_backend, scenario) == []


def test_write_after_commit_is_refused(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> None:
        async with store.writer("file-e") as writer:
            await writer.commit()
            with pytest.raises(RuntimeError):
                await writer.write(b"late")

    run(make_backend, scenario)


@pytest.mark.parametrize(("data", "chunk", "lines"), [
    (b"a\nb\nc\n", 1, [b"a", b"b", b"c"]),
    (b"a\nb\nc", 2, [b"a", b"b", b"c"]),  # the last line needs no newline
    (b'{"x": 1}\n\n{"y": 2}\n', 3, [b'{"x": 1}', b"", b'{"y": 2}']),
    (b"one long line across chunks\n", 4, [b"one long line across chunks"]),
    (b"", 1, []),
    (b"\n", 1, [b""]),
])
def test_lines(make_backend: MakeBackend, data: bytes, chunk: int, lines: list[bytes]) -> None:
    async def scenario(store: FileStore) -> list[bytes]:
        await store_bytes(store, "file-l", data, chunk=chunk)
        return [line async for line in store.lines("file-l")]

    assert run(make_backend, scenario) == lines


def test_a_line_over_the_bound_is_refused(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> None:
        await store_bytes(store, "file-long", b"short\n" + b"x" * 100 + b"\n")
        with pytest.raises(LineTooLong):
            _ = [line async for line in store.lines("file-long", max_line_bytes=50)]

    run(make_backend, scenario)


def test_delete(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> list[str]:
        await store_bytes(store, "file-f", b"data", expires_at=NOW + 10)
        assert await store.delete("file-f") is True
        assert await store.delete("file-f") is False
        assert await store.stat("file-f") is None
        with pytest.raises(ObjectNotFound):
            await read(store, "file-f")
        return await everything_stored(store.backend)

    assert run(make_backend, scenario) == []  # the expiry marker went too


def test_names_by_prefix_in_order(make_backend: MakeBackend) -> None:
    names = ["batch_1/parts/w2-1", "batch_1/parts/w1-1", "batch_1-x", "batch_1/output", "file-z", "batch_2/parts/a"]

    async def scenario(store: FileStore) -> dict[str, list[str]]:
        await asyncio.gather(*(store_bytes(store, name, name.encode()) for name in names))
        return {prefix: [n async for n in store.names(prefix)] for prefix in ("", "batch_1/parts/", "batch_1", "f")}

    assert run(make_backend, scenario) == {
        "": sorted(names),
        "batch_1/parts/": ["batch_1/parts/w1-1", "batch_1/parts/w2-1"],
        "batch_1": ["batch_1-x", "batch_1/output", "batch_1/parts/w1-1", "batch_1/parts/w2-1"],
        "f": ["file-z"],
    }


def test_sweep_deletes_only_what_expired_and_bounds_its_work(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> None:
        for index in range(5):
            await store_bytes(store, f"file-old{index}", b"old", expires_at=NOW + 10 + index)
        await store_bytes(store, "file-later", b"later", expires_at=NOW + 1000)
        await store_bytes(store, "file-kept", b"kept")  # no expiry

        first = await store.sweep_expired(now=NOW + 100, limit=2)
        assert (first.deleted, first.examined, first.more) == (2, 2, True)
        rest = await store.sweep_expired(now=NOW + 100, limit=10)
        assert (rest.deleted, rest.more) == (3, False)
        assert sorted([n async for n in store.names()]) == ["file-kept", "file-later"]
        assert (await store.sweep_expired(now=NOW + 100)).examined == 0

        final = await store.sweep_expired(now=NOW + 1000)
        assert final.deleted == 1
        assert [n async for n in store.names()] == ["file-kept"]

    run(make_backend, scenario)


def test_sweep_keeps_an_object_written_again_with_a_later_expiry(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> None:
        await store_bytes(store, "file-again", b"v1", expires_at=NOW + 10)
        await store_bytes(store, "file-again", b"v2", expires_at=NOW + 500)
        result = await store.sweep_expired(now=NOW + 100)
        assert (result.deleted, result.examined) == (0, 1)  # the stale marker only
        assert await read(store, "file-again") == b"v2"
        assert (await store.sweep_expired(now=NOW + 600)).deleted == 1

    run(make_backend, scenario)


def test_sweep_removes_what_a_crash_mid_commit_left(make_backend: MakeBackend) -> None:
    async def scenario(store: FileStore) -> list[str]:
        # The marker and the bytes were written, the process died before the meta: invisible, but stored.
        await store.backend.put(f"expiry/{NOW + 5:011d}/file-orphan", b"")
        await store.backend.put("objects/file-orphan", b"bytes")
        assert await store.stat("file-orphan") is None
        result = await store.sweep_expired(now=NOW + 10)
        assert result.deleted == 0  # it never existed for anyone
        return await everything_stored(store.backend)

    assert run(make_backend, scenario) == []


@pytest.mark.parametrize("size", [10, MIN_PART_BYTES + 10])  # buffered only, and a multipart upload under way
def test_sweep_removes_what_a_process_killed_mid_write_left(make_backend: MakeBackend, size: int) -> None:
    async def scenario(store: FileStore) -> None:
        # Written, then the process dies: neither commit nor abort ever runs.
        cut = await store.backend.open_writer("objects/file-cut")
        await cut.write(b"x" * size)
        if isinstance(cut, DirectoryWriter):
            await cut._flush()  # what its next megabyte would have done
            await store.backend.put("meta/.file-half.0123456789ab.tmp", b"")  # a `put` killed mid-way
        assert await store.stat("file-cut") is None
        # Left: two temporary files; or an S3 multipart upload (and its marker), but nothing before the first part.
        left = 2 if isinstance(cut, DirectoryWriter) else int(size > MIN_PART_BYTES)
        assert len(await everything_stored(store.backend)) == 2 * left if isinstance(cut, S3Writer) else left
        await asyncio.sleep(0.05)
        started_before = time.time()
        await asyncio.sleep(1.1)  # past the clock's grain (an S3 server's may be a second)
        async with store.writer("file-live") as live:  # a write under way, begun after the cut-off: kept
            await live.write(b"y" * size)
            assert await store.sweep_abandoned(started_before=started_before - 3600) == 0  # nothing that old
            assert await store.sweep_abandoned(started_before=started_before) == left
            await live.commit()
        if isinstance(cut, DirectoryWriter):
            cut._handle.close()  # the dead process's descriptor, closed with it
        assert await read(store, "file-live") == b"y" * size
        assert await everything_stored(store.backend) == ["meta/file-live", "objects/file-live"]

    run(make_backend, scenario)


@pytest.mark.parametrize("name", [
    "", "../etc/passwd", "/abs", "a//b", ".hidden", "a/.tmp", "with space", "a/../b", "x" * 600, "a\\b", "é",
    "trailing/",
])
def test_names_llmq_does_not_make_are_refused_before_any_io(tmp_path: Path, name: str) -> None:
    backend = DirectoryBackend(tmp_path / "files")  # the check comes before the backend, whichever it is

    async def scenario(store: FileStore) -> None:
        with pytest.raises(InvalidName):
            store.writer(name)
        with pytest.raises(InvalidName):
            await store.stat(name)
        with pytest.raises(InvalidName):
            await read(store, name)
        with pytest.raises(InvalidName):
            await store.delete(name)

    run(lambda: backend, scenario)
    assert not backend.root.exists()


def test_new_file_ids_are_valid_names_and_distinct() -> None:
    ids = {new_file_id() for _ in range(1000)}
    assert len(ids) == 1000
    for file_id in ids:
        assert file_id.startswith("file-") and len(file_id) == 29
        FileStore(DirectoryBackend("/nonexistent")).writer(file_id)  # checked, not opened


def test_the_machines_aws_settings_do_not_reach_the_tests(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmq.devstack.s3_server import clean_aws_environment

    assert s3_server.endpoint_url.startswith("http://127.0.0.1:")  # an IP literal: nothing is resolved
    monkeypatch.setenv("AWS_PROFILE", "a-profile-of-this-machine")  # botocore would fail to find it
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-of-this-machine")
    monkeypatch.setenv("HTTPS_PROXY", "http://192.0.2.1:3128")
    with clean_aws_environment():
        assert not {"AWS_PROFILE", "AWS_ACCESS_KEY_ID", "HTTPS_PROXY"} & set(os.environ)
        assert os.environ["AWS_CONFIG_FILE"] == os.devnull
    assert os.environ["AWS_PROFILE"] == "a-profile-of-this-machine"  # and the environment is restored


@pytest.mark.parametrize(("start", "lines"), [
    (0, [b"a", b"bb", b"ccc"]),
    (2, [b"bb", b"ccc"]),  # the first byte of line 2: where the batch feeder resumes
    (5, [b"ccc"]),
    (8, []),  # the end
    (50, []),  # past it
])
def test_lines_from_a_byte_offset(make_backend: MakeBackend, start: int, lines: list[bytes]) -> None:
    async def scenario(store: FileStore) -> list[bytes]:
        await store_bytes(store, "file-offset", b"a\nbb\nccc")
        return [line async for line in store.lines("file-offset", start=start)]

    assert run(make_backend, scenario) == lines
