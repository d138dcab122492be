"""Deterministic chat-completion answers, as one JSON body or as server-sent-event chunks."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_WORD_BOUNDARY = re.compile(r"(?<=\s)(?=\S)")
_DONE = b"data: [DONE]\n\n"


class RequestError(ValueError):
    """The request body is not a valid chat-completion request."""


@dataclass(frozen=True, slots=True)
class ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    tool_name: str | None


@dataclass(frozen=True, slots=True)
class Answer:
    id: str
    created: int
    model: str
    content: str | None
    tool_call_id: str | None
    tool_name: str | None
    arguments: str | None
    finish_reason: str
    usage: dict[str, int]


def parse_request(body: object) -> ChatRequest:
    if not isinstance(body, dict):
        raise RequestError("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise RequestError("'model' is a required property and must be a string.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty array.")
    if not all(isinstance(m, dict) for m in messages):
        raise RequestError("Each entry of 'messages' must be an object.")
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return ChatRequest(
        model=model,
        messages=messages,
        stream=body.get("stream") is True,
        include_usage=include_usage,
        tool_name=_first_tool_name(body.get("tools")),
    )


def _first_tool_name(tools: object) -> str | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise RequestError("'tools' must be an array.")
    first = tools[0]
    function = first.get("function") if isinstance(first, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise RequestError("'tools[0].function.name' must be a non-empty string.")
    return name


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return " ".join(parts)
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return message_text(message)
    return message_text(messages[-1])


def _count_words(text: str) -> int:
    return len(text.split())


def build_answer(request: ChatRequest) -> Answer:
    # The id only depends on the input so that retries of the same request can be recognised.
    canonical = request.model + json.dumps(request.messages, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    echo = _last_user_text(request.messages)
    prompt_tokens = sum(_count_words(message_text(m)) for m in request.messages)
    if request.tool_name is not None:
        arguments = json.dumps({"echo": echo, "n": 1})
        content, tool_call_id, finish = None, f"call_mock_{digest[24:32]}", "tool_calls"
        completion_tokens = _count_words(arguments)
    else:
        arguments, tool_call_id, finish = None, None, "stop"
        content = "Echo: " + echo
        completion_tokens = _count_words(content)
    return Answer(
        id=f"chatcmpl-mock-{digest[:24]}",
        created=int(time.time()),
        model=request.model,
        content=content,
        tool_call_id=tool_call_id,
        tool_name=request.tool_name,
        arguments=arguments,
        finish_reason=finish,
        usage={
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    )


def completion_body(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.content}
    if answer.tool_call_id is not None:
        message["tool_calls"] = [
            {
                "id": answer.tool_call_id,
                "type": "function",
                "function": {"name": answer.tool_name, "arguments": answer.arguments},
            }
        ]
    return {
        "id": answer.id,
        "object": "chat.completion",
        "created": answer.created,
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": answer.usage,
    }


def split_words(text: str) -> list[str]:
    """Word-sized pieces that keep their trailing whitespace, so they join back to `text`."""
    return [piece for piece in _WORD_BOUNDARY.split(text) if piece]


def split_even(text: str, min_pieces: int = 3) -> list[str]:
    """At least `min_pieces` fragments (when the text is long enough) of roughly equal size."""
    count = max(min_pieces, len(text) // 16)
    size = max(1, -(-len(text) // count))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _chunk_head(answer: Answer) -> dict[str, Any]:
    return {
        "id": answer.id, "object": "chat.completion.chunk", "created": answer.created, "model": answer.model,
    }


def _delta_events(answer: Answer) -> Iterator[bytes]:
    """Every chunk up to (not including) the one carrying the finish_reason."""
    head = _chunk_head(answer)

    def chunk(delta: dict[str, Any]) -> bytes:
        return _event({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    if answer.tool_call_id is None:
        yield chunk({"role": "assistant", "content": ""})
        for piece in split_words(answer.content or ""):
            yield chunk({"content": piece})
        return
    yield chunk(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": answer.tool_call_id,
                    "type": "function",
                    "function": {"name": answer.tool_name, "arguments": ""},
                }
            ],
        }
    )
    for piece in split_even(answer.arguments or ""):
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})


def stream_events(answer: Answer, *, include_usage: bool) -> list[bytes]:
    """The full, well-formed event stream ending with [DONE]."""
    head = _chunk_head(answer)
    events = list(_delta_events(answer))
    final_choice = {"index": 0, "delta": {}, "finish_reason": answer.finish_reason}
    events.append(_event({**head, "choices": [final_choice]}))
    if include_usage:
        events.append(_event({**head, "choices": [], "usage": answer.usage}))
    events.append(_DONE)
    return events


def cut_stream_events(answer: Answer, chunks: int | None = None) -> list[bytes]:
    """A few delta chunks (`chunks` of them, when given) and nothing else: no finish_reason, no usage, no [DONE]."""
    events = list(_delta_events(answer))
    return events[: max(2, min(3, len(events) - 1)) if chunks is None else chunks]
