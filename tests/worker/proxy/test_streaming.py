"""Tests for assembling an SSE chat-completions stream into one ChatCompletion."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmq.worker.proxy.errors import InvalidCompletion, StreamIncomplete
from llmq.worker.proxy.streaming import CompletionAssembler, Delta, assemble
from llmq.worker.sse import iter_events

BASE = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1700000000, "model": "gpt-x"}


def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    """One streamed chunk with the shared identity fields."""
    return {**BASE, "choices": choices, **extra}


def choice(index: int = 0, finish_reason: str | None = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason}


def sse(*chunks: dict[str, Any] | str, done: bool = True) -> list[str]:
    """Lines of an SSE stream, as httpx2's iter_lines() yields them."""
    lines: list[str] = []
    for item in chunks:
        lines += [f"data: {item if isinstance(item, str) else json.dumps(item)}", ""]
    if done:
        lines += ["data: [DONE]", ""]
    return lines


def tool(index: int, id: str | None = None, name: str | None = None, args: str | None = None) -> dict:
    fragment: dict[str, Any] = {"index": index, "function": {}}
    if id is not None:
        fragment.update(id=id, type="function")
    if name is not None:
        fragment["function"]["name"] = name
    if args is not None:
        fragment["function"]["arguments"] = args
    return fragment


PLAIN = sse(
    chunk([choice(role="assistant", content="")], system_fingerprint="fp_1"),
    chunk([choice(content="Hel")]),
    chunk([choice(content="lo!")]),
    chunk([choice(finish_reason="stop")]),
)
PLAIN_EXPECTED = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-x",
    "system_fingerprint": "fp_1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
}

USAGE = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
WITH_USAGE = sse(
    chunk([choice(role="assistant", content="Hi")], usage=None),
    chunk([choice(finish_reason="stop")], usage=None),
    chunk([], usage=USAGE),
)
WITH_USAGE_EXPECTED = {
    **{k: v for k, v in PLAIN_EXPECTED.items() if k != "system_fingerprint"},
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}],
    "usage": USAGE,
}

MULTI = sse(
    chunk([choice(0, role="assistant", content=""), choice(1, role="assistant", content="")]),
    chunk([choice(1, content="B1")]),
    chunk([choice(0, content="A1")]),
    chunk([choice(0, content="A2"), choice(1, content="B2")]),
    chunk([choice(1, finish_reason="length")]),
    chunk([choice(0, finish_reason="stop")]),
)
MULTI_EXPECTED = {
    **{k: v for k, v in PLAIN_EXPECTED.items() if k != "system_fingerprint"},
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "A1A2"}, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "B1B2"}, "finish_reason": "length"},
    ],
}

EMPTY = sse(chunk([choice(role="assistant")]), chunk([choice(finish_reason="stop")]))
EMPTY_EXPECTED = {
    **{k: v for k, v in PLAIN_EXPECTED.items() if k != "system_fingerprint"},
    "choices": [{"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "stop"}],
}

REASONING = sse(
    chunk([choice(role="assistant", reasoning_content="Think")]),
    chunk([choice(reasoning_content="ing.")]),
    chunk([choice(content="42")]),
    chunk([choice(finish_reason="stop")]),
)
REASONING_EXPECTED = {
    **{k: v for k, v in PLAIN_EXPECTED.items() if k != "system_fingerprint"},
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "42", "reasoning_content": "Thinking."},
            "finish_reason": "stop",
        }
    ],
}

LOGPROBS = sse(
    chunk(
        [
            {
                **choice(role="assistant", content="a"),
                "logprobs": {"content": [{"token": "a"}], "refusal": None},
            }
        ]
    ),
    chunk([{**choice(content="b"), "logprobs": {"content": [{"token": "b"}], "refusal": None}}]),
    chunk([{**choice(finish_reason="stop"), "logprobs": None}]),
)
LOGPROBS_EXPECTED = {
    **{k: v for k, v in PLAIN_EXPECTED.items() if k != "system_fingerprint"},
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "ab"},
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": "a"}, {"token": "b"}], "refusal": None},
        }
    ],
}


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(PLAIN, PLAIN_EXPECTED, id="plain-content"),
        pytest.param(WITH_USAGE, WITH_USAGE_EXPECTED, id="usage-chunk-with-empty-choices"),
        pytest.param(MULTI, MULTI_EXPECTED, id="n=2"),
        pytest.param(EMPTY, EMPTY_EXPECTED, id="no-content-at-all"),
        pytest.param(REASONING, REASONING_EXPECTED, id="reasoning-content"),
        pytest.param(LOGPROBS, LOGPROBS_EXPECTED, id="logprobs-merged"),
    ],
)
def test_assemble_equals_non_stream_completion(lines: list[str], expected: dict[str, Any]) -> None:
    assert assemble(lines) == expected


def test_tool_calls_interleaved_by_index_assemble_into_valid_json() -> None:
    lines = sse(
        chunk([choice(role="assistant", content=None)]),
        chunk([choice(tool_calls=[tool(0, id="call_a", name="get_weather", args="")])]),
        chunk([choice(tool_calls=[tool(1, id="call_b", name="get_time", args="")])]),
        chunk([choice(tool_calls=[tool(0, args='{"ci')])]),
        chunk([choice(tool_calls=[tool(1, args='{"tz"')])]),
        chunk([choice(tool_calls=[tool(0, args='ty": "Pa')])]),
        chunk([choice(tool_calls=[tool(1, args=': "UTC"')])]),
        chunk([choice(tool_calls=[tool(0, args='ris", "unit"')])]),
        chunk([choice(tool_calls=[tool(0, args=': "C"}')])]),
        chunk([choice(tool_calls=[tool(1, args="}")])]),
        chunk([choice(finish_reason="tool_calls")]),
    )
    result = assemble(lines)
    (only,) = result["choices"]
    assert only["finish_reason"] == "tool_calls"
    message = only["message"]
    assert message["content"] is None
    calls = message["tool_calls"]
    assert [(c["id"], c["type"], c["function"]["name"]) for c in calls] == [
        ("call_a", "function", "get_weather"),
        ("call_b", "function", "get_time"),
    ]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert json.loads(calls[1]["function"]["arguments"]) == {"tz": "UTC"}


def test_tool_call_type_defaults_to_function_and_split_name_is_joined() -> None:
    asm = CompletionAssembler()
    asm.feed(chunk([choice(tool_calls=[{"index": 0, "id": "c1", "function": {"name": "get_"}}])]))
    asm.feed(chunk([choice(tool_calls=[{"index": 0, "function": {"name": "weather", "arguments": "{}"}}])]))
    asm.feed(chunk([choice(finish_reason="tool_calls")]))
    asm.feed_data("[DONE]")
    (call,) = asm.result()["choices"][0]["message"]["tool_calls"]
    assert call == {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        pytest.param(
            sse(chunk([choice(content="Hi")]), chunk([choice(finish_reason="stop")]), done=False),
            "stream ended before [DONE]",
            id="finish-reason-but-no-done",
        ),
        pytest.param(
            sse(chunk([choice(content="Hi")]), done=False), "stream ended before [DONE]", id="cut-off"
        ),
        pytest.param(
            sse(chunk([choice(content="Hi")])), "stream ended without a finish_reason", id="no-finish"
        ),
        pytest.param(
            sse(
                chunk([choice(0, content="a"), choice(1, content="b")]),
                chunk([choice(0, finish_reason="stop")]),
            ),
            "stream ended without a finish_reason (choice 1)",
            id="one-of-two-unfinished",
        ),
        pytest.param([], "no chunk", id="empty-input"),
        pytest.param(sse(), "no chunk", id="done-only"),
    ],
)
def test_incomplete_stream_raises_stream_incomplete(lines: list[str], message: str) -> None:
    with pytest.raises(StreamIncomplete) as info:
        assemble(lines)
    assert message in info.value.message


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(
            json.dumps({"error": {"message": "upstream overloaded", "type": "server_error"}}),
            "upstream overloaded",
            id="openai-error-object",
        ),
        pytest.param(json.dumps({"code": 500, "msg": "internal failure"}), "internal failure", id="code-msg"),
        pytest.param('{"choices": [', "not valid JSON", id="invalid-json"),
        pytest.param("[1, 2]", "not a JSON object", id="not-an-object"),
    ],
)
def test_bad_chunk_mid_stream_raises_invalid_completion(payload: str, message: str) -> None:
    lines = sse(
        chunk([choice(role="assistant", content="Hi")]), payload, chunk([choice(finish_reason="stop")])
    )
    with pytest.raises(InvalidCompletion) as info:
        assemble(lines)
    assert message in info.value.message
    assert info.value.body_excerpt is not None


def test_deltas_returned_in_order_with_content() -> None:
    asm = CompletionAssembler()
    seen: list[Delta] = []
    for event in iter_events(PLAIN):
        seen += asm.feed_data(event.data)
    assert asm.done
    assert seen == [
        Delta(choice_index=0, content="Hel"),
        Delta(choice_index=0, content="lo!"),
        Delta(choice_index=0, finish_reason="stop"),
    ]
    assert asm.result() == PLAIN_EXPECTED


def test_deltas_carry_tool_fragments_as_received_and_reasoning() -> None:
    asm = CompletionAssembler()
    fragment = tool(0, id="c1", name="f", args='{"')
    assert asm.feed(chunk([choice(tool_calls=[fragment])])) == [
        Delta(choice_index=0, tool_call_fragments=[fragment])
    ]
    assert asm.feed(chunk([choice(reasoning_content="hmm")])) == [
        Delta(choice_index=0, reasoning_content="hmm")
    ]
    two = asm.feed(chunk([choice(1, content="x"), choice(0, content="y")]))
    assert [(d.choice_index, d.content) for d in two] == [(1, "x"), (0, "y")]


def test_done_is_false_until_done_and_later_chunks_are_ignored() -> None:
    asm = CompletionAssembler()
    asm.feed_data(json.dumps(chunk([choice(content="a", finish_reason="stop")])))
    assert not asm.done
    with pytest.raises(StreamIncomplete):
        asm.result()
    asm.feed_data("[DONE]")
    assert asm.done
    assert asm.feed_data(json.dumps(chunk([choice(content="late")]))) == []
    assert asm.result()["choices"][0]["message"]["content"] == "a"
