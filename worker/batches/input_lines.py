"""The lines of a batch input file, checked one at a time as they stream past.

A batch input file is JSONL in OpenAI's request form, one request a line:

    {"custom_id": "q-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "gpt-4o", "messages": [...]}}

`InputCheck` is fed the file's bytes in chunks of any size (the upload as it arrives, or the stored file
when a batch is validated) and keeps only counts: requests, blank lines, the models named, and per kind of
problem its count and its first line. Duplicate `custom_id`s are found by a 16-byte digest of each, so
the memory is bounded by `max_lines`, not by the file. `check_line` is the rule for one line, a pure
function tested by a table of cases.

Problem kinds (the batch's `errors.data[].code` when a file is refused):
`invalid_json_line`, `not_an_object`, `missing_custom_id`, `duplicate_custom_id`, `invalid_method`,
`invalid_url`, `missing_body`, `missing_model`, `missing_messages`, `line_too_long`, `too_many_lines`,
`empty_file`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

CHAT_ENDPOINT = "/v1/chat/completions"
MAX_LINES = 50_000
MAX_LINE_BYTES = 4 * 1024 * 1024  # one request's body: the same bound as LLMQ_MAX_BODY_BYTES' default
MAX_MODELS_KEPT = 64
MAX_ID_CHARS_SHOWN = 80


@dataclass(frozen=True)
class Problem:
    code: str
    message: str


@dataclass(frozen=True)
class LineProblem:
    line: int
    """1-based physical line number in the file."""
    code: str
    message: str


@dataclass(frozen=True)
class Request:
    """What the rest of the batch needs from a valid line."""

    custom_id: str
    model: str


def check_line(raw: bytes, endpoint: str = CHAT_ENDPOINT) -> Request | Problem:
    """One non-blank line: the request it holds, or the first thing wrong with it."""
    try:
        data: Any = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        return Problem("invalid_json_line", f"not valid JSON ({err})")
    if not isinstance(data, dict):
        return Problem("not_an_object", "a line must be a JSON object")
    custom_id = data.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Problem("missing_custom_id", "custom_id must be a non-empty string")
    if data.get("method") != "POST":
        return Problem("invalid_method", f"method must be 'POST' (got {data.get('method')!r:.40})")
    if data.get("url") != endpoint:
        return Problem("invalid_url", f"url must be the batch's endpoint {endpoint!r} (got {data.get('url')!r:.80})")
    body = data.get("body")
    if not isinstance(body, dict):
        return Problem("missing_body", "body must be a JSON object (the chat completion request)")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        return Problem("missing_model", "body.model must be a non-empty string")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return Problem("missing_messages", "body.messages must be a non-empty list")
    return Request(custom_id, model)


@dataclass
class ProblemCount:
    count: int
    first: LineProblem


@dataclass
class InputSummary:
    lines: int = 0
    """Physical lines, blank ones included."""
    requests: int = 0
    """Valid request lines."""
    blank_lines: int = 0
    problems: dict[str, ProblemCount] = field(default_factory=dict)
    models: dict[str, int] = field(default_factory=dict)
    """Requests per model, for the first MAX_MODELS_KEPT models named."""

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def first_problems(self) -> list[LineProblem]:
        """The first occurrence of each kind of problem, in line order."""
        return sorted((p.first for p in self.problems.values()), key=lambda p: p.line)


class InputCheck:
    def __init__(self, endpoint: str = CHAT_ENDPOINT, max_lines: int = MAX_LINES,
                 max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.endpoint, self.max_lines, self.max_line_bytes = endpoint, max_lines, max_line_bytes
        self.summary = InputSummary()
        self._pending = bytearray()
        self._overlong = False  # inside a line already reported too long: skip to its end
        self._seen: dict[bytes, int] = {}  # digest of custom_id -> line
        self._entries = 0  # non-blank lines so far, valid or not
        self._finished = False

    def feed(self, data: bytes) -> None:
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            if self._overlong:
                self._overlong = False
                self.summary.lines += 1  # the too-long line ends here; it was reported when it overflowed
            elif len(self._pending) + end - start > self.max_line_bytes:
                self._pending.clear()
                self.summary.lines += 1
                self._too_long(self.summary.lines)
            elif self._pending:
                self._pending += data[start:end]
                self._line(bytes(self._pending))
                self._pending.clear()
            else:
                self._line(data[start:end])
            start = end + 1
        if not self._overlong:
            self._pending += data[start:]
            if len(self._pending) > self.max_line_bytes:
                self._pending.clear()
                self._overlong = True
                self._too_long(self.summary.lines + 1)

    def _too_long(self, line: int) -> None:
        self._entries += 1
        self._report(line, Problem("line_too_long", f"a line is over {self.max_line_bytes} bytes"))

    def finish(self) -> InputSummary:
        if not self._finished:
            self._finished = True
            if self._overlong:
                self.summary.lines += 1
            elif self._pending:
                self._line(bytes(self._pending))
                self._pending.clear()
            if self.summary.requests == 0 and not self.summary.problems:
                self._report(0, Problem("empty_file", "the file holds no request lines"))
        return self.summary

    def _line(self, raw: bytes) -> None:
        summary = self.summary
        summary.lines += 1
        number = summary.lines
        if not raw.strip():
            summary.blank_lines += 1
            return
        self._entries += 1
        if self._entries > self.max_lines:
            self._report(number, Problem("too_many_lines", f"a batch holds at most {self.max_lines} requests"))
            return
        found = check_line(raw, self.endpoint)
        if isinstance(found, Problem):
            self._report(number, found)
            return
        digest = hashlib.blake2b(found.custom_id.encode(), digest_size=16).digest()
        earlier = self._seen.setdefault(digest, number)
        if earlier != number:
            shown = found.custom_id[:MAX_ID_CHARS_SHOWN]
            self._report(number, Problem("duplicate_custom_id", f"custom_id {shown!r} repeats line {earlier}"))
            return
        summary.requests += 1
        if found.model in summary.models or len(summary.models) < MAX_MODELS_KEPT:
            summary.models[found.model] = summary.models.get(found.model, 0) + 1

    def _report(self, line: int, problem: Problem) -> None:
        known = self.summary.problems.get(problem.code)
        if known is None:
            self.summary.problems[problem.code] = ProblemCount(1, LineProblem(line, problem.code, problem.message))
        else:
            known.count += 1
