"""The batch input file's rules, line by line and over a whole stream fed in arbitrary chunks."""

from __future__ import annotations

import json

import pytest

from llmq.worker.batches.input_lines import InputCheck, Problem, Request, check_line


def line(**overrides: object) -> bytes:
    data: dict[str, object] = {
        "custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "你好"}]},
    }
    data.update(overrides)
    return json.dumps({k: v for k, v in data.items() if v is not ...}, ensure_ascii=False).encode()


@pytest.mark.parametrize(("raw", "expected"), [
    (line(), Request("q-1", "gpt-4o")),
    (b'{"custom_id": "q-1", ', "invalid_json_line"),
    (b"\xff\xfe", "invalid_json_line"),
    (b"[1, 2]", "not_an_object"),
    (b"null", "not_an_object"),
    (line(custom_id=...), "missing_custom_id"),
    (line(custom_id=""), "missing_custom_id"),
    (line(custom_id=7), "missing_custom_id"),
    (line(method="GET"), "invalid_method"),
    (line(method=...), "invalid_method"),
    (line(url="/v1/embeddings"), "invalid_url"),
    (line(url=...), "invalid_url"),
    (line(body="text"), "missing_body"),
    (line(body=...), "missing_body"),
    (line(body={"messages": [{"role": "user", "content": "x"}]}), "missing_model"),
    (line(body={"model": " ", "messages": [{"role": "user", "content": "x"}]}), "missing_model"),
    (line(body={"model": "m"}), "missing_messages"),
    (line(body={"model": "m", "messages": []}), "missing_messages"),
])
def test_check_line(raw: bytes, expected: Request | str) -> None:
    found = check_line(raw)
    if isinstance(expected, Request):
        assert found == expected
    else:
        assert isinstance(found, Problem) and found.code == expected, found


def feed(data: bytes, chunk: int, **limits: int) -> InputCheck:
    check = InputCheck(**limits)
    for start in range(0, len(data), chunk):
        check.feed(data[start:start + chunk])
    check.finish()
    return check


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_a_stream_is_summarised_the_same_whatever_its_chunks(chunk: int) -> None:
    data = b"\n".join([
        line(custom_id="a"),
        b"",
        line(custom_id="b", body={"model": "m2", "messages": [{"role": "user", "content": "x"}]}),
        b"{broken",
        line(custom_id="a"),  # repeats line 1
        line(custom_id="c", url="/v1/completions"),
        b"{also broken",
        line(custom_id="d"),
    ])  # no final newline
    summary = feed(data, chunk).summary
    assert (summary.lines, summary.requests, summary.blank_lines) == (8, 3, 1)
    assert summary.models == {"gpt-4o": 2, "m2": 1}
    assert {code: (p.count, p.first.line) for code, p in summary.problems.items()} == {
        "invalid_json_line": (2, 4), "duplicate_custom_id": (1, 5), "invalid_url": (1, 6),
    }
    assert "repeats line 1" in summary.problems["duplicate_custom_id"].first.message
    assert [p.line for p in summary.first_problems] == [4, 5, 6]
    assert not summary.valid


def test_too_many_lines_is_reported_at_the_first_one_over() -> None:
    data = b"".join(line(custom_id=f"q-{i}") + b"\n" for i in range(12))
    summary = feed(data, 100, max_lines=10).summary
    assert summary.requests == 10
    assert summary.problems["too_many_lines"].count == 2
    assert summary.problems["too_many_lines"].first.line == 11


@pytest.mark.parametrize("chunk", [3, 1000])
def test_a_line_over_the_bound_is_reported_and_skipped(chunk: int) -> None:
    long = line(custom_id="long", body={"model": "m", "messages": [{"role": "user", "content": "x" * 500}]})
    data = line(custom_id="a") + b"\n" + long + b"\n" + line(custom_id="b") + b"\n"
    summary = feed(data, chunk, max_line_bytes=300).summary
    assert summary.lines == 3 and summary.requests == 2
    assert summary.problems["line_too_long"].first.line == 2


@pytest.mark.parametrize("data", [b"", b"\n\n  \n"])
def test_a_file_without_requests_is_empty(data: bytes) -> None:
    assert list(feed(data, 4).summary.problems) == ["empty_file"]


def test_models_kept_are_bounded() -> None:
    data = b"".join(
        line(custom_id=f"q-{i}", body={"model": f"m-{i}", "messages": [{"role": "user", "content": "x"}]}) + b"\n"
        for i in range(100)
    )
    summary = feed(data, 4096).summary
    assert summary.requests == 100 and len(summary.models) == 64
