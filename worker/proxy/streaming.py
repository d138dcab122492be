"""Assemble an OpenAI chat-completions SSE stream into one non-stream ChatCompletion.

Pure: no network, no Redis. Feed it lines as they arrive, e.g.

    assembler = CompletionAssembler()
    for event in iter_events(response.iter_lines()):
        for delta in assembler.feed_data(event.data):
            publish(delta)
    completion = assembler.result()

Contract: a stream counts as complete only when `[DONE]` was seen AND every choice
carries a finish_reason. Some proxies send a finish_reason but never `[DONE]`; that is
still treated as incomplete, so partial text is never stored as a success.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmq.worker.proxy.errors import InvalidCompletion, StreamIncomplete
from llmq.worker.sse import iter_events

DONE_SENTINEL = "[DONE]"


@dataclass
class Delta:
    """What one chunk added to one choice, for forwarding to live listeners.

    Empty-string content is reported as None; a Delta is only produced when at least
    one field carries something.
    """

    choice_index: int
    content: str | None = None
    tool_call_fragments: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    reasoning_content: str | None = None


@dataclass
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type or "function",
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@dataclass
class _Choice:
    index: int
    role: str | None = None
    content: list[str] = field(default_factory=list)
    reasoning: list[str] | None = None
    refusal: list[str] | None = None
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None
    logprobs_sent: bool = False
    logprobs_content: list[Any] | None = None
    logprobs_refusal: list[Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        text = "".join(self.content)
        content: str | None = text
        # Mirror the non-stream shape: null content when the answer is tool calls or a refusal.
        if not text and (self.tool_calls or self.refusal is not None):
            content = None
        message: dict[str, Any] = {"role": self.role or "assistant", "content": content}
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i].to_dict() for i in sorted(self.tool_calls)]
        if self.refusal is not None:
            message["refusal"] = "".join(self.refusal)
        if self.reasoning is not None:
            message["reasoning_content"] = "".join(self.reasoning)
        out: dict[str, Any] = {"index": self.index, "message": message, "finish_reason": self.finish_reason}
        if self.logprobs_sent:
            if self.logprobs_content is None and self.logprobs_refusal is None:
                out["logprobs"] = None
            else:
                out["logprobs"] = {"content": self.logprobs_content, "refusal": self.logprobs_refusal}
        return out


def _error_message(chunk: dict[str, Any]) -> str | None:
    """The message of an error object sent in place of a chunk, or None if it is not one."""
    error = chunk.get("error")
    if error:
        if isinstance(error, dict):
            msg = error.get("message") or error.get("msg") or json.dumps(error)[:200]
            code = error.get("code") or error.get("type")
            return f"{msg} (code {code})" if code else str(msg)
        return str(error)
    if "choices" not in chunk and ("msg" in chunk or "message" in chunk or "code" in chunk):
        msg = chunk.get("msg") or chunk.get("message") or "unknown error"
        code = chunk.get("code")
        return f"{msg} (code {code})" if code is not None else str(msg)
    return None


class CompletionAssembler:
    """Accumulate streamed chunks and build the equivalent non-stream ChatCompletion.

    `result()` succeeds only if `[DONE]` was seen and every choice has a finish_reason;
    a finish_reason without `[DONE]` is still incomplete (partial text is never a success).
    Chunks after `[DONE]` are ignored.
    """

    def __init__(self) -> None:
        self._done = False
        self._chunks = 0
        self._id: str | None = None
        self._created: int | None = None
        self._model: str | None = None
        self._system_fingerprint: str | None = None
        self._usage: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}

    @property
    def done(self) -> bool:
        """Whether `[DONE]` has been seen."""
        return self._done

    def feed_data(self, data: str) -> list[Delta]:
        """Take one SSE data payload: `[DONE]` or a JSON chunk."""
        text = data.strip()
        if self._done:
            return []
        if text == DONE_SENTINEL:
            self._done = True
            return []
        if not text:
            # An empty `data:` line is a keep-alive, not a chunk.
            return []
        try:
            chunk = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidCompletion(f"stream chunk is not valid JSON: {exc.msg}", body=data) from exc
        return self._feed(chunk, data)

    def feed(self, chunk: dict[str, Any]) -> list[Delta]:
        """Take one parsed chunk; return the deltas it carries, in choice order."""
        if self._done:
            return []
        return self._feed(chunk, None)

    def _feed(self, chunk: Any, raw: str | None) -> list[Delta]:
        body = raw if raw is not None else json.dumps(chunk, default=str)
        if not isinstance(chunk, dict):
            raise InvalidCompletion("stream chunk is not a JSON object", body=body)
        message = _error_message(chunk)
        if message is not None:
            raise InvalidCompletion(f"error in stream: {message}", body=body)
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        elif not isinstance(choices, list):
            raise InvalidCompletion("stream chunk has non-list choices", body=body)
        self._chunks += 1
        self._take_metadata(chunk)
        deltas: list[Delta] = []
        for position, raw_choice in enumerate(choices):
            if not isinstance(raw_choice, dict) or not isinstance(raw_choice.get("delta") or {}, dict):
                raise InvalidCompletion("stream choice is not an object with a delta object", body=body)
            delta = self._take_choice(raw_choice, position)
            if delta is not None:
                deltas.append(delta)
        return deltas

    def _take_metadata(self, chunk: dict[str, Any]) -> None:
        # The first value wins for identity fields; they repeat in every chunk.
        if self._id is None and chunk.get("id"):
            self._id = chunk["id"]
        if self._created is None and chunk.get("created") is not None:
            self._created = chunk["created"]
        if self._model is None and chunk.get("model"):
            self._model = chunk["model"]
        if chunk.get("system_fingerprint"):
            self._system_fingerprint = chunk["system_fingerprint"]
        # Usage is null on most chunks; the last non-null one is the total.
        if chunk.get("usage") is not None:
            self._usage = chunk["usage"]

    def _take_choice(self, raw: dict[str, Any], position: int) -> Delta | None:
        index = raw.get("index", position)
        choice = self._choices.get(index)
        if choice is None:
            choice = self._choices[index] = _Choice(index=index)
        delta = raw.get("delta") or {}
        if delta.get("role") and choice.role is None:
            choice.role = delta["role"]
        content = delta.get("content")
        if content:
            choice.content.append(content)
        reasoning = delta.get("reasoning_content")
        if reasoning is not None:
            choice.reasoning = [*(choice.reasoning or []), reasoning]
        refusal = delta.get("refusal")
        if refusal is not None:
            choice.refusal = [*(choice.refusal or []), refusal]
        fragments = delta.get("tool_calls") or None
        if fragments:
            if not isinstance(fragments, list) or not all(isinstance(f, dict) for f in fragments):
                raise InvalidCompletion("stream delta has malformed tool_calls", body=json.dumps(raw))
            for fragment in fragments:
                self._take_tool_fragment(choice, fragment)
        if raw.get("finish_reason"):
            choice.finish_reason = raw["finish_reason"]
        if "logprobs" in raw:
            self._take_logprobs(choice, raw["logprobs"])
        if not (content or fragments or raw.get("finish_reason") or reasoning):
            return None
        return Delta(
            choice_index=index,
            content=content or None,
            tool_call_fragments=fragments,
            finish_reason=raw.get("finish_reason") or None,
            reasoning_content=reasoning or None,
        )

    @staticmethod
    def _take_tool_fragment(choice: _Choice, fragment: dict[str, Any]) -> None:
        index = fragment.get("index")
        if index is None:
            # Some vendors omit the index: a new id starts a new call, otherwise continue the last.
            starts_new = fragment.get("id") or not choice.tool_calls
            index = len(choice.tool_calls) if starts_new else max(choice.tool_calls)
        call = choice.tool_calls.get(index)
        if call is None:
            call = choice.tool_calls[index] = _ToolCall()
        if fragment.get("id") and call.id is None:
            call.id = fragment["id"]
        if fragment.get("type") and call.type is None:
            call.type = fragment["type"]
        function = fragment.get("function") or {}
        if function.get("name"):
            call.name += function["name"]
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif arguments is not None:
            # A vendor that sends parsed arguments: keep the wire format (a JSON string).
            call.arguments.append(json.dumps(arguments))

    @staticmethod
    def _take_logprobs(choice: _Choice, logprobs: Any) -> None:
        choice.logprobs_sent = True
        if not isinstance(logprobs, dict):
            return
        if logprobs.get("content") is not None:
            choice.logprobs_content = [*(choice.logprobs_content or []), *logprobs["content"]]
        if logprobs.get("refusal") is not None:
            choice.logprobs_refusal = [*(choice.logprobs_refusal or []), *logprobs["refusal"]]

    def result(self) -> dict[str, Any]:
        """The assembled ChatCompletion; raises StreamIncomplete if the stream did not finish."""
        if self._chunks == 0:
            if self._done:
                raise StreamIncomplete("stream had [DONE] but no chunk")
            raise StreamIncomplete("stream ended before [DONE]: no chunk received")
        if not self._done:
            raise StreamIncomplete("stream ended before [DONE]")
        if not self._choices:
            raise StreamIncomplete("stream ended without any choice")
        unfinished = [i for i in sorted(self._choices) if self._choices[i].finish_reason is None]
        if unfinished:
            raise StreamIncomplete(
                f"stream ended without a finish_reason (choice {', '.join(map(str, unfinished))})"
            )
        completion: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
        }
        if self._system_fingerprint is not None:
            completion["system_fingerprint"] = self._system_fingerprint
        completion["choices"] = [self._choices[i].to_dict() for i in sorted(self._choices)]
        if self._usage is not None:
            completion["usage"] = self._usage
        return completion


def assemble(lines: Iterable[str]) -> dict[str, Any]:
    """Parse a whole SSE stream given as lines and return the assembled ChatCompletion."""
    assembler = CompletionAssembler()
    for event in iter_events(lines):
        assembler.feed_data(event.data)
    return assembler.result()
