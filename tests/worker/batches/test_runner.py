"""The runner's helpers that the sweeper calls."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llmq.worker.batches.runner import sweep_files
from llmq.worker.files.directory import DirectoryBackend
from llmq.worker.files.store import FileStore


def test_sweep_files_deletes_what_expired_and_keeps_the_rest(tmp_path: Path) -> None:
    files = FileStore(DirectoryBackend(tmp_path / "files"))

    async def store(name: str, expires_at: int) -> None:
        async with files.writer(name) as writer:
            await writer.write(b"x\n")
            await writer.commit(expires_at=expires_at)

    asyncio.run(store("batch_a/parts/out-1", 1_000))  # long expired: a part a crash left behind
    asyncio.run(store("file-kept", 4_000_000_000))
    assert sweep_files(files, abandoned_write_s=3600) == 1
    assert asyncio.run(files.stat("batch_a/parts/out-1")) is None
    assert asyncio.run(files.stat("file-kept")) is not None
