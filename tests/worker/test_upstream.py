"""What the worker keeps of a proxy's 2xx answer: the completion as received, or an error worth another attempt."""

from __future__ import annotations

import json

import pytest

from worker.errors import InvalidCompletion
from worker.upstream import check_completion

COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "你好"}, "finish_reason": "stop"}]}


def test_the_stored_text_is_the_proxys_own() -> None:
    body = json.dumps(COMPLETION, ensure_ascii=False, indent=2).encode()
    completion = check_completion(body)
    assert completion.data == COMPLETION
    assert completion.text == body.decode(), "kept as received: no parse-and-dump on the way to Redis"


def test_a_completion_in_utf16_is_stored_as_utf8_json() -> None:
    completion = check_completion(json.dumps(COMPLETION).encode("utf-16"))
    assert completion.data == COMPLETION and json.loads(completion.text) == COMPLETION


@pytest.mark.parametrize("body", [b"<html>busy</html>", b'{"error": {"message": "quota"}}', b'{"choices": []}', b"[]"])
def test_anything_but_a_completion_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidCompletion):
        check_completion(body)
