"""`POST /v1/files` read as it arrives: a multipart body streamed into the file store.

The form is OpenAI's: `file` (the JSONL), `purpose` (`batch`), and optionally `expires_after[anchor]`
(`created_at`) and `expires_after[seconds]` (an hour to 30 days). python-multipart, the parser Starlette
itself uses, is fed the request's chunks as they come; the file part goes straight into a store writer,
counted and checked line by line (`llmq.worker.batches.input_lines`) on the way, so the API holds one
chunk, one partial line and the counts, never the file. Past `max_file_bytes` the upload stops at once
with 413; any refusal leaves nothing in the store (the writer is aborted).

The route calls `receive_upload(request.headers.get("content-type"), request.stream(), store, file_id,
rules)` and turns an `UploadError` into its error answer.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable
from contextlib import AsyncExitStack
from dataclasses import dataclass

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from llmq.worker.batches.input_lines import InputCheck, InputSummary
from llmq.worker.files.store import FileStore, ObjectInfo, ObjectWriter

FILES_PATH = "/v1/files"
PURPOSES = frozenset({"batch"})
DEFAULT_EXPIRY_S = 30 * 24 * 3600  # OpenAI's for batch files
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 24 * 3600
MAX_FIELD_BYTES = 1024
MAX_HEADER_BYTES = 8 * 1024
MAX_PARTS = 16
FORM_OVERHEAD_BYTES = 64 * 1024  # the fields, part headers and boundaries around the file
MAX_FILENAME_CHARS = 255


class UploadError(Exception):
    """An upload refused, with the status, the form field at fault (`param`) and a message to act on."""

    def __init__(self, status_code: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code, self.code, self.message, self.param = status_code, code, message, param


@dataclass(frozen=True)
class UploadRules:
    max_file_bytes: int
    default_expiry_s: int = DEFAULT_EXPIRY_S
    purposes: frozenset[str] = PURPOSES


@dataclass(frozen=True)
class UploadedFile:
    stored: ObjectInfo
    """Name (the file id), size, created_at and expires_at, as committed."""
    filename: str
    purpose: str
    lines: InputSummary
    """Requests, blank lines, models, and each kind of bad line with its count and first line number."""


def upload_body_limit(max_file_bytes: int) -> int:
    """The body-limit middleware's backstop for the upload route: above what `receive_upload` refuses itself."""
    return max_file_bytes + 2 * FORM_OVERHEAD_BYTES


def _refuse(code: str, message: str, param: str | None = None, status_code: int = 400) -> UploadError:
    return UploadError(status_code, code, message, param)


def _boundary(content_type: str | None) -> bytes:
    media, options = parse_options_header(content_type)
    if media != b"multipart/form-data":
        raise _refuse("unsupported_media_type", "Send the file as multipart/form-data (fields `file` and "
                      f"`purpose`), got Content-Type {content_type or 'none'!r}.", status_code=415)
    boundary = options.get(b"boundary")
    if not boundary:
        raise _refuse("invalid_multipart", "The multipart/form-data Content-Type has no boundary.")
    return boundary


def _expires_after_s(fields: dict[str, str]) -> int | None:
    anchor = fields.get("expires_after[anchor]")
    seconds = fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise _refuse("invalid_expires_after", "expires_after[anchor] must be 'created_at'.", "expires_after.anchor")
    if seconds is None or not seconds.strip().isdigit() or not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise _refuse("invalid_expires_after", f"expires_after[seconds] must be a whole number from {MIN_EXPIRY_S} "
                      f"(an hour) to {MAX_EXPIRY_S} (30 days), got {seconds!r:.40}.", "expires_after.seconds")
    return int(seconds)


class _Form:
    """python-multipart's callbacks are synchronous; they queue what they saw, and `_take` acts on it."""

    def __init__(self, store: FileStore, name: str, rules: UploadRules) -> None:
        self.store, self.name, self.rules = store, name, rules
        self.fields: dict[str, str] = {}
        self.writer: ObjectWriter | None = None
        self.filename = ""
        self.check = InputCheck()
        self.ended = False
        self.parts = 0
        self._events: list[tuple[str, bytes]] = []
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._header_bytes = 0
        self._disposition = b""
        self._field: str | None = None  # the field being read; None while in the file part
        self._value = bytearray()

    def parser(self, boundary: bytes) -> MultipartParser:
        return MultipartParser(boundary, {
            "on_part_begin": self._on_part_begin,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": lambda: self._events.append(("part", self._disposition)),
            "on_part_data": lambda data, start, end: self._events.append(("data", data[start:end])),
            "on_part_end": lambda: self._events.append(("end", b"")),
            "on_end": self._on_end,
        })

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._header_bytes = 0

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]
        self._count_header(end - start)

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        self._count_header(end - start)

    def _count_header(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _refuse("invalid_multipart", f"A part's headers are over {MAX_HEADER_BYTES} bytes.")

    def _on_header_end(self) -> None:
        if self._header_field.lower() == b"content-disposition":
            self._disposition = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _on_end(self) -> None:
        self.ended = True

    async def take(self, stack: AsyncExitStack) -> None:
        events, self._events = self._events, []
        for kind, data in events:
            if kind == "data":
                await self._data(data)
            elif kind == "part":
                await self._part_begins(data, stack)
            else:
                self._part_ends()

    async def _part_begins(self, disposition: bytes, stack: AsyncExitStack) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _refuse("invalid_multipart", f"The form has more than {MAX_PARTS} parts.")
        _, options = parse_options_header(disposition)
        field = options.get(b"name", b"").decode("utf-8", "replace")
        if not field:
            raise _refuse("invalid_multipart", "A form part has no name in its Content-Disposition.")
        if field != "file":
            self._field = field
            self._value.clear()
            return
        if self.writer is not None:
            raise _refuse("invalid_multipart", "Send one `file` part per upload.", "file")
        if b"filename" not in options:
            raise _refuse("invalid_multipart", "The `file` part must be a file (with a filename).", "file")
        self.filename = os.path.basename(options[b"filename"].decode("utf-8", "replace"))[:MAX_FILENAME_CHARS]
        self._field = None
        self.writer = await stack.enter_async_context(self.store.writer(self.name))

    async def _data(self, data: bytes) -> None:
        if self._field is not None:
            self._value += data
            if len(self._value) > MAX_FIELD_BYTES:
                raise _refuse("invalid_multipart", f"The form field {self._field[:40]!r} is over {MAX_FIELD_BYTES} "
                              "bytes.", self._field[:40])
            return
        assert self.writer is not None
        if self.writer.size + len(data) > self.rules.max_file_bytes:
            raise _refuse("file_too_large", f"The file is over the limit of {self.rules.max_file_bytes} bytes "
                          "(LLMQ_FILES_MAX_UPLOAD_BYTES); split it into several batches.", "file", 413)
        self.check.feed(data)
        await self.writer.write(data)

    def _part_ends(self) -> None:
        if self._field is None:
            self.check.finish()
            return
        try:
            value = self._value.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("invalid_multipart", f"The form field {self._field[:40]!r} is not UTF-8 text.",
                          self._field[:40]) from None
        self.fields[self._field] = value
        # Checked as soon as they arrive: a wrong purpose sent before the file stops the upload there.
        if self._field == "purpose":
            _check_purpose(value, self.rules)
        elif self._field.startswith("expires_after[") and "expires_after[anchor]" in self.fields \
                and "expires_after[seconds]" in self.fields:
            _expires_after_s(self.fields)
        self._field = None


def _check_purpose(purpose: str, rules: UploadRules) -> None:
    if purpose not in rules.purposes:
        allowed = ", ".join(repr(p) for p in sorted(rules.purposes))
        raise _refuse("invalid_purpose", f"purpose must be {allowed}, got {purpose!r:.40}.", "purpose")


async def receive_upload(
    content_type: str | None, body: AsyncIterable[bytes], store: FileStore, name: str, rules: UploadRules
) -> UploadedFile:
    """Parse the multipart body as it arrives and store its file under `name`; raises UploadError."""
    boundary = _boundary(content_type)
    form = _Form(store, name, rules)
    parser = form.parser(boundary)
    max_body = rules.max_file_bytes + FORM_OVERHEAD_BYTES
    received = 0
    async with AsyncExitStack() as stack:  # aborts the writer on any way out but the commit
        async for chunk in body:
            received += len(chunk)
            if received > max_body:
                raise _refuse("file_too_large", f"The upload is over the limit of {rules.max_file_bytes} bytes "
                              "(LLMQ_FILES_MAX_UPLOAD_BYTES) plus the form around it.", "file", 413)
            try:
                parser.write(chunk)
            except FormParserError as err:
                raise _refuse("invalid_multipart", f"The multipart body is malformed: {err}.") from None
            await form.take(stack)
        try:
            parser.finalize()
        except FormParserError as err:
            raise _refuse("invalid_multipart", f"The multipart body is malformed: {err}.") from None
        await form.take(stack)
        if not form.ended:
            raise _refuse("invalid_multipart", "The body ended before the multipart's closing boundary.")
        if form.writer is None:
            raise _refuse("missing_file", "The form has no `file` part: send the JSONL file as `file`.", "file")
        purpose = form.fields.get("purpose")
        if purpose is None:
            raise _refuse("missing_purpose", "The form has no `purpose` field: send purpose=batch.", "purpose")
        _check_purpose(purpose, rules)
        expiry_s = _expires_after_s(form.fields) or rules.default_expiry_s
        stored = await form.writer.commit(expires_at=form.writer.created_at + expiry_s)
    return UploadedFile(stored, form.filename, purpose, form.check.summary)
