"""`receive_upload`: OpenAI's file upload form parsed as it streams in, straight into the file store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import psutil
import pytest

from llmq.api.uploads import UploadedFile, UploadError, UploadRules, receive_upload
from llmq.devstack.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, clean_aws_environment
from llmq.worker.files.backend import Backend
from llmq.worker.files.directory import DirectoryBackend
from llmq.worker.files.s3 import S3Backend
from llmq.worker.files.store import FileStore

BOUNDARY = "llmq-test-7d3f0a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
NAME = "file-0123456789abcdef01234567"
MIB = 1024 * 1024


def request_line(index: int, model: str = "gpt-4o") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": f"第 {index} 题：把这句话翻译成英文。"}]}
    line = {"custom_id": f"q-{index}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(line, ensure_ascii=False).encode() + b"\n"


JSONL = b"".join(request_line(i) for i in range(20))


def field(name: str, value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + data + b"\r\n"


def file_head(filename: str = "prompts.jsonl", name: str = "file") -> bytes:
    return (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n").encode()


def file_part(content: bytes = JSONL, filename: str = "prompts.jsonl") -> bytes:
    return file_head(filename) + content + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def form(*parts: bytes) -> bytes:
    return b"".join(parts) + END


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


async def streamed(pieces: Iterable[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def upload(backend: Backend, body: bytes | Iterable[bytes], chunk: int = 65_536,
           content_type: str | None = CONTENT_TYPE, **rules: Any) -> tuple[UploadedFile | UploadError, list[str]]:
    """The upload's result (or refusal) and the names the store holds afterwards."""

    async def main() -> tuple[UploadedFile | UploadError, list[str]]:
        store = FileStore(backend)
        stream = chunked(body, chunk) if isinstance(body, bytes) else streamed(body)
        result: UploadedFile | UploadError
        try:
            result = await receive_upload(content_type, stream, store, NAME,
                                          UploadRules(**{"max_file_bytes": 10 * MIB, **rules}))
        except UploadError as err:
            result = err
        names = [n async for n in store.names()]
        await store.aclose()
        return result, names

    return asyncio.run(main())


@pytest.fixture
def backend(tmp_path: Path) -> DirectoryBackend:
    return DirectoryBackend(tmp_path / "files")


def stored_files(backend: DirectoryBackend) -> list[Path]:
    return sorted(p for p in backend.root.rglob("*") if p.is_file()) if backend.root.exists() else []


@pytest.mark.parametrize("chunk", [1, 7, 61, 1000, 1 << 20])  # boundaries and lines split every way
def test_the_file_is_stored_and_summarised_whatever_the_chunks(backend: DirectoryBackend, chunk: int) -> None:
    body = form(field("purpose", "batch"), file_part(filename="C:\\work\\../prompts.jsonl"))
    result, names = upload(backend, body, chunk)
    assert isinstance(result, UploadedFile), result
    assert names == [NAME]
    assert (backend.root / "objects" / NAME).read_bytes() == JSONL
    assert result.stored.size == len(JSONL)
    assert result.stored.expires_at == result.stored.created_at + 30 * 24 * 3600
    assert result.purpose == "batch"
    assert result.filename == "prompts.jsonl"  # a name to show, never a path
    assert (result.lines.requests, result.lines.models, result.lines.valid) == (20, {"gpt-4o": 20}, True)


def test_the_form_as_an_http_client_encodes_it(backend: DirectoryBackend) -> None:
    request = httpx2.Request(
        "POST", "http://127.0.0.1/v1/files",
        data={"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"},
        files={"file": ("batch.jsonl", JSONL, "application/jsonl")},
    )
    result, _ = upload(backend, request.read(), 4096, request.headers["content-type"])
    assert isinstance(result, UploadedFile), result
    assert result.stored.expires_at == result.stored.created_at + 7200
    assert result.filename == "batch.jsonl"


def test_fields_may_follow_the_file(backend: DirectoryBackend) -> None:
    body = form(file_part(), field("expires_after[seconds]", "3600"), field("expires_after[anchor]", "created_at"),
                field("purpose", "batch"), field("unknown_extra", "ignored"))
    result, names = upload(backend, body, 100)
    assert isinstance(result, UploadedFile), result
    assert result.stored.expires_at == result.stored.created_at + 3600
    assert names == [NAME]


def test_bad_lines_are_counted_not_refused(backend: DirectoryBackend) -> None:
    content = request_line(1) + b"{not json\n" + request_line(1) + b"\n" + request_line(2, "other")
    result, names = upload(backend, form(field("purpose", "batch"), file_part(content)), 5)
    assert isinstance(result, UploadedFile) and names == [NAME]
    summary = result.lines
    assert (summary.lines, summary.requests, summary.blank_lines) == (5, 2, 1)
    assert {code: p.first.line for code, p in summary.problems.items()} == {
        "invalid_json_line": 2, "duplicate_custom_id": 3}


@pytest.mark.parametrize(("body", "content_type", "status", "code", "param"), [
    (form(field("purpose", "batch")), CONTENT_TYPE, 400, "missing_file", "file"),
    (form(file_part()), CONTENT_TYPE, 400, "missing_purpose", "purpose"),
    (form(field("purpose", "fine-tune"), file_part()), CONTENT_TYPE, 400, "invalid_purpose", "purpose"),
    (form(file_part(), field("purpose", "assistants")), CONTENT_TYPE, 400, "invalid_purpose", "purpose"),
    (form(field("purpose", "batch"), field("expires_after[anchor]", "now"), field("expires_after[seconds]", "3600"),
          file_part()), CONTENT_TYPE, 400, "invalid_expires_after", "expires_after.anchor"),
    (form(field("purpose", "batch"), field("expires_after[anchor]", "created_at"),
          field("expires_after[seconds]", "60"), file_part()), CONTENT_TYPE, 400, "invalid_expires_after",
     "expires_after.seconds"),
    (form(field("purpose", "batch"), field("expires_after[seconds]", "3600"), file_part()), CONTENT_TYPE, 400,
     "invalid_expires_after", "expires_after.anchor"),
    (form(field("purpose", "batch"), file_part(), file_part()), CONTENT_TYPE, 400, "invalid_multipart", "file"),
    (form(field("purpose", "batch"), field("file", JSONL)), CONTENT_TYPE, 400, "invalid_multipart", "file"),
    (form(field("purpose", "batch"), field("notes", "x" * 5000), file_part()), CONTENT_TYPE, 400,
     "invalid_multipart", "notes"),
    (form(*[field(f"f{i}", "x") for i in range(20)], field("purpose", "batch"), file_part()), CONTENT_TYPE, 400,
     "invalid_multipart", None),
    (form(field("purpose", b"\xff\xfe"), file_part()), CONTENT_TYPE, 400, "invalid_multipart", "purpose"),
    (field("purpose", "batch") + file_part(), CONTENT_TYPE, 400, "invalid_multipart", None),  # no closing boundary
    (field("purpose", "batch") + file_head() + JSONL[:100], CONTENT_TYPE, 400, "invalid_multipart", None),  # cut off
    (b"garbage without any boundary", CONTENT_TYPE, 400, "invalid_multipart", None),
    (form(field("purpose", "batch"), file_part()), "multipart/form-data", 400, "invalid_multipart", None),
    (JSONL, "application/jsonl", 415, "unsupported_media_type", None),
    (JSONL, None, 415, "unsupported_media_type", None),
])
def test_refusals_leave_nothing_stored(backend: DirectoryBackend, body: bytes, content_type: str | None,
                                       status: int, code: str, param: str | None) -> None:
    result, names = upload(backend, body, 37, content_type)
    assert isinstance(result, UploadError), result
    assert (result.status_code, result.code, result.param) == (status, code, param), result.message
    assert names == [] and stored_files(backend) == []  # no object, no temporary file


def test_a_file_over_the_limit_is_refused_as_soon_as_it_crosses_it(backend: DirectoryBackend) -> None:
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent
        yield field("purpose", "batch") + file_head()
        while sent < 100_000:  # far more than the limit, if anything kept reading
            sent += len(JSONL)
            yield JSONL
        yield b"\r\n" + END

    result, names = upload(backend, pieces(), max_file_bytes=5000)
    assert isinstance(result, UploadError) and result.status_code == 413 and result.code == "file_too_large"
    assert "5000 bytes" in result.message and "LLMQ_FILES_MAX_UPLOAD_BYTES" in result.message
    assert sent < 5000 + 2 * len(JSONL)
    assert names == [] and stored_files(backend) == []


def test_a_body_padded_outside_the_file_is_bounded_too(backend: DirectoryBackend) -> None:
    # Bytes after the closing boundary are skipped by the parser, so only the body count can stop them.
    padding = (b"x" * 65_536 for _ in range(100))
    body = [form(field("purpose", "batch"), file_part()), *padding]
    result, names = upload(backend, body, max_file_bytes=100_000)
    assert isinstance(result, UploadError) and result.status_code == 413
    assert names == []


def test_an_upload_just_over_200_mib_is_refused_without_the_memory_growing(backend: DirectoryBackend) -> None:
    limit = 200 * MIB
    block = b"".join(request_line(i) for i in range(800))  # about 110 KB of realistic lines
    head = form(field("purpose", "batch"), file_head())[: -len(END)]
    process = psutil.Process()
    baseline = peak = process.memory_info().rss
    sent = 0

    def pieces() -> Iterator[bytes]:
        nonlocal sent, peak
        yield head
        while sent <= limit:  # one byte over the limit, and then some more
            piece = block[: limit + 1 - sent] if sent + len(block) > limit + 1 else block
            sent += len(piece)
            peak = max(peak, process.memory_info().rss)
            yield piece
        yield b"\r\n" + END

    result, names = upload(backend, pieces(), max_file_bytes=limit)
    assert isinstance(result, UploadError) and result.status_code == 413, result
    assert sent == limit + 1
    assert names == [] and stored_files(backend) == []
    growth = peak - baseline
    assert growth < 50 * MIB, f"RSS grew {growth / MIB:.1f} MiB while 200 MiB streamed through"


def test_the_upload_streams_into_a_bucket(s3_server: S3Server) -> None:
    bucket = "llmq-uploads"
    s3_server.create_bucket(bucket)
    content = b"".join(request_line(i) for i in range(60_000))[: 7 * MIB]  # more than one multipart part
    content = content[: content.rindex(b"\n") + 1]
    with clean_aws_environment():
        backend = S3Backend(f"s3://{bucket}/files", endpoint_url=s3_server.endpoint_url, region=REGION,
                            access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY)

        async def read_back() -> bytes:
            store = FileStore(S3Backend(f"s3://{bucket}/files", endpoint_url=s3_server.endpoint_url, region=REGION,
                                        access_key_id=ACCESS_KEY_ID, secret_access_key=SECRET_ACCESS_KEY))
            data = b"".join([chunk async for chunk in store.chunks(NAME)])
            await store.aclose()
            return data

        result, names = upload(backend, form(field("purpose", "batch"), file_part(content)), 65_536)
        assert isinstance(result, UploadedFile), result
        assert names == [NAME] and result.stored.size == len(content)
        assert result.lines.requests == content.count(b"\n") and result.lines.valid
        assert asyncio.run(read_back()) == content
