"""A file store per test, on each backend: the same tests run on a directory and on an S3 bucket."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llmq.devstack.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, clean_aws_environment
from llmq.worker.files.backend import Backend
from llmq.worker.files.directory import DirectoryBackend
from llmq.worker.files.s3 import MIN_PART_BYTES, S3Backend

MakeBackend = Callable[[], Backend]


@pytest.fixture(params=["directory", "s3"])
def make_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeBackend]:
    """A factory: a backend must be made on the event loop that uses it (the S3 client belongs to one loop)."""
    if request.param == "directory":
        yield lambda: DirectoryBackend(tmp_path / "files")
        return
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"llmq-test-{uuid.uuid4().hex[:12]}"
    server.create_bucket(bucket)
    with clean_aws_environment():
        yield lambda: S3Backend(
            f"s3://{bucket}/files", endpoint_url=server.endpoint_url, region=REGION,
            access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY, part_bytes=MIN_PART_BYTES,
        )
