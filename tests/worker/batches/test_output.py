"""The output and error lines of a batch, and the finalizer's rule: each line once, unfinished lines reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llmq.worker.batches import output
from llmq.worker.batches.runner import _write_outputs
from llmq.worker.files.directory import DirectoryBackend
from llmq.worker.files.store import FileStore

JOB = "job_AAAAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(("error", "expected"), [
    ({"type": "http_error", "message": "bad", "status_code": 400, "body_excerpt": '{"error":{"message":"bad"}}'},
     {"response": {"status_code": 400, "request_id": JOB, "body": {"error": {"message": "bad"}}}, "error": None}),
    ({"type": "http_error", "message": "oops", "status_code": 502, "body_excerpt": "<html>"},
     {"response": {"status_code": 502, "request_id": JOB,
                   "body": {"error": {"message": "oops", "type": "http_error", "code": None}}}, "error": None}),
    ({"type": "timeout", "message": "read timed out", "status_code": None, "body_excerpt": None},
     {"response": None, "error": {"code": "timeout", "message": "read timed out"}}),
])
def test_failed_line(error: dict[str, Any], expected: dict[str, Any]) -> None:
    line = json.loads(output.failed_line(JOB, "c1", error))
    assert line == {"id": "batch_req_AAAAAAAAAAAAAAAAAAAAAA", "custom_id": "c1", **expected}


def test_succeeded_line_keeps_the_proxys_body() -> None:
    body = '{"id":"chatcmpl-1","choices":[{"message":{"content":"é"}}]}'
    line = json.loads(output.succeeded_line(JOB, 'quote"d', body))
    assert line["custom_id"] == 'quote"d' and line["error"] is None
    assert line["response"] == {"status_code": 200, "request_id": JOB, "body": json.loads(body)}


@pytest.mark.parametrize(("usage", "counts"), [
    ({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
     {"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}),
    ({"prompt_tokens": 3, "prompt_tokens_details": {"cached_tokens": 2},
      "completion_tokens_details": {"reasoning_tokens": 4}},
     {"input_tokens": 3, "cached_tokens": 2, "reasoning_tokens": 4}),
    ({"prompt_tokens": -1, "total_tokens": "8"}, {}),
    (None, {}),
])
def test_usage_counts(usage: Any, counts: dict[str, int]) -> None:
    assert output.usage_counts({"usage": usage}) == counts


def request(custom_id: str) -> bytes:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}).encode()


@pytest.mark.parametrize(("ending", "code"), [("expired", "batch_expired"), ("cancelled", "batch_cancelled"),
                                              ("", "line_lost")])
def test_finalize_writes_each_line_once_and_reports_the_rest(tmp_path: Path, ending: str, code: str) -> None:
    async def run() -> tuple[dict[str, list[dict[str, Any]]], int]:
        files = FileStore(DirectoryBackend(tmp_path / "files"))
        async with files.writer("file-input") as w:
            # Lines 1-5 are requests, line 3 is blank.
            await w.write(b"\n".join([request("a"), request("b"), b"", request("d"), request("e")]) + b"\n")
            await w.commit()
        parts = {
            "batch_x/parts/out-1": [(1, '{"custom_id":"a","n":1}'), (2, '{"custom_id":"b","n":1}')],
            # Line 2 ran twice (its part was committed, then its worker died before marking it): kept once.
            "batch_x/parts/out-2": [(2, '{"custom_id":"b","n":2}')],
            "batch_x/parts/err-3": [(4, '{"custom_id":"d","n":1}')],
        }
        for name, lines in parts.items():
            async with files.writer(name) as w:
                await w.write("".join(f"{n}\t{text}\n" for n, text in lines).encode())
                await w.commit()
        fields = {"id": "batch_x", "input_file_id": "file-input", "lines": "5"}
        written = await _write_outputs(files, fields, 2_000_000_000, ending)
        result = {}
        for kind, (file_id, _) in written.files.items():
            result[kind] = [json.loads(line) async for line in files.lines(file_id)]
        await files.aclose()
        return result, written.unseen

    result, unseen = asyncio.run(run())
    assert result["output"] == [{"custom_id": "a", "n": 1}, {"custom_id": "b", "n": 1}]
    assert result["error"][0] == {"custom_id": "d", "n": 1}
    assert [(e["custom_id"], e["error"]["code"], e["response"]) for e in result["error"][1:]] == [("e", code, None)]
    assert unseen == 1


def test_finalize_of_a_stopped_batch_skips_lines_that_are_not_requests(tmp_path: Path) -> None:
    """A batch cancelled before validation failed it: its unreadable lines are not requests to report."""
    async def run() -> list[dict[str, Any]]:
        files = FileStore(DirectoryBackend(tmp_path / "files"))
        async with files.writer("file-input") as w:
            await w.write(b"\n".join([request("a"), b"{oops", b"[1]", request("d")]))  # no final newline
            await w.commit()
        written = await _write_outputs(files, {"id": "batch_y", "input_file_id": "file-input", "lines": "4"},
                                       2_000_000_000, "cancelled")
        assert "output" not in written.files and written.unseen == 2
        lines = [json.loads(line) async for line in files.lines(written.files["error"][0])]
        await files.aclose()
        return lines

    assert [(e["custom_id"], e["error"]["code"]) for e in asyncio.run(run())] == \
        [("a", "batch_cancelled"), ("d", "batch_cancelled")]
