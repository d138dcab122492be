"""The file store in an S3-compatible bucket, for API processes and workers on several hosts.

Why aiobotocore (botocore on aiohttp) rather than boto3: both callers of the store run on an event loop.
The API is asyncio; a worker's proxy calls, and so the batch runner appending results as they arrive, run
on its process's one loop (`llmq.worker.runtime.event_loop`), where synchronous task code reaches it
through `wait`. boto3 would block that loop on every request or need a thread hop per part; aiobotocore
awaits the same botocore requests (signing, retries, errors are botocore's own) on the loop itself.

Large objects are streamed with a multipart upload: at most one part (`part_bytes`, 8 MiB by default; S3
needs 5 MiB or more for all parts but the last) is held in memory, whatever the object's size. An object
smaller than one part is sent with a single PUT. An upload whose process died before completing or aborting
it leaves parts behind in the bucket: the store's sweep aborts it (`remove_abandoned`) once it is older than
`LLMQ_FILES_ABANDONED_WRITE_S`. Its age is told by a marker, `writes/<started, ms>/<key>`, put before the
upload begins and deleted once it is completed or aborted: S3-compatible servers do not all report when an
upload began.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

from llmq.worker.files.backend import READ_CHUNK_BYTES, ObjectNotFound

DEFAULT_PART_BYTES = 8 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024
MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
WRITES = "writes/"  # markers of multipart uploads under way, by start time (see the module docstring)


def parse_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` as (bucket, prefix ending in `/` or empty)."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"must look like s3://BUCKET/PREFIX, got {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _missing(err: ClientError) -> bool:
    return str(err.response.get("Error", {}).get("Code")) in MISSING_CODES


class S3Writer:
    def __init__(self, backend: S3Backend, client: Any, key: str) -> None:
        self._backend, self._client, self._key = backend, client, key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._marker: str | None = None
        self._done = False

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= self._backend.part_bytes:
            await self._send_part()

    async def _send_part(self) -> None:
        if self._upload_id is None:
            # Marked first: a process killed from here on leaves an upload that the sweep can date.
            self._marker = self._backend._key(f"{WRITES}{int(time.time() * 1000):014d}/") + self._key
            await self._client.put_object(Bucket=self._backend.bucket, Key=self._marker, Body=b"")
            answer = await self._client.create_multipart_upload(Bucket=self._backend.bucket, Key=self._key)
            self._upload_id = answer["UploadId"]
        number = len(self._parts) + 1
        part, self._buffer = bytes(self._buffer), bytearray()
        answer = await self._client.upload_part(
            Bucket=self._backend.bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
        )
        self._parts.append({"ETag": answer["ETag"], "PartNumber": number})

    async def commit(self) -> None:
        bucket = self._backend.bucket
        if self._upload_id is None:
            await self._client.put_object(Bucket=bucket, Key=self._key, Body=bytes(self._buffer))
        else:
            if self._buffer:
                await self._send_part()
            await self._client.complete_multipart_upload(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        self._buffer = bytearray()
        self._done = True
        await self._unmark()

    async def _unmark(self) -> None:
        if self._marker is not None:
            await self._client.delete_object(Bucket=self._backend.bucket, Key=self._marker)
            self._marker = None

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        if self._upload_id is not None:
            await self._client.abort_multipart_upload(
                Bucket=self._backend.bucket, Key=self._key, UploadId=self._upload_id
            )
        await self._unmark()


class S3Backend:
    """One bucket and key prefix. The client is made on first use, on the loop that uses the store."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 multipart parts must be at least {MIN_PART_BYTES} bytes")
        self.bucket, self.prefix = parse_s3_url(url)
        self.part_bytes = part_bytes
        self._endpoint_url = endpoint_url
        self._region = region
        # None: botocore's own chain (environment, shared files, instance role) finds the credentials.
        self._credentials = (
            {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key} if access_key_id else {}
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            config = AioConfig(
                # S3-compatible servers answer on their own host: keys go in the path, not a bucket subdomain.
                s3={"addressing_style": "path" if self._endpoint_url else "auto"},
                # botocore's default checksums are refused by several S3-compatible servers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"mode": "standard", "max_attempts": 5},
            )
            client = get_session().create_client(
                "s3", endpoint_url=self._endpoint_url, region_name=self._region, config=config, **self._credentials
            )
            self._client = await self._stack.enter_async_context(client)
        return self._client

    def _key(self, key: str) -> str:
        return self.prefix + key

    async def open_writer(self, key: str) -> S3Writer:
        return S3Writer(self, await self._s3(), self._key(key))

    async def read(self, key: str, chunk_bytes: int = READ_CHUNK_BYTES, start: int = 0) -> AsyncIterator[bytes]:
        client = await self._s3()
        ranged = {"Range": f"bytes={start}-"} if start else {}
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=self._key(key), **ranged)
        except ClientError as err:
            if _missing(err):
                raise ObjectNotFound(key) from None
            if start and str(err.response.get("Error", {}).get("Code")) == "InvalidRange":
                return  # at or past the end: nothing more to read
            raise
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(chunk_bytes):
                yield chunk

    async def put(self, key: str, data: bytes) -> None:
        await (await self._s3()).put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    async def get(self, key: str) -> bytes | None:
        client = await self._s3()
        try:
            answer = await client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as err:
            if _missing(err):
                return None
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
            return data

    async def delete(self, key: str) -> None:
        await (await self._s3()).delete_object(Bucket=self.bucket, Key=self._key(key))

    async def keys(self, prefix: str, start_after: str = "") -> AsyncIterator[str]:
        client = await self._s3()
        arguments = {"Bucket": self.bucket, "Prefix": self._key(prefix)}
        if start_after:
            arguments["StartAfter"] = self._key(start_after)
        async for page in client.get_paginator("list_objects_v2").paginate(**arguments):
            for item in page.get("Contents", ()):
                yield item["Key"][len(self.prefix):]

    async def remove_abandoned(self, started_before: float, limit: int) -> int:
        # A killed writer's multipart upload: its parts stay in the bucket (and are billed) until it is aborted.
        client = await self._s3()
        removed = 0
        async for marker in self.keys(WRITES):  # oldest first
            stamp, _, key = marker[len(WRITES):].partition("/")  # the upload's key in the bucket, prefix included
            if int(stamp) / 1000 >= started_before or removed == limit:
                break
            pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=key)
            async for page in pages:
                for upload in page.get("Uploads", ()):
                    if upload["Key"] != key:
                        continue  # another key that begins with this one
                    try:
                        await client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"],
                                                            UploadId=upload["UploadId"])
                    except ClientError as err:
                        if str(err.response.get("Error", {}).get("Code")) != "NoSuchUpload":
                            raise
                        continue  # completed or aborted meanwhile
                    removed += 1
            await self.delete(marker)
        return removed

    async def aclose(self) -> None:
        await self._stack.aclose()
        self._client = None
