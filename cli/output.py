"""Everything the CLI prints goes through here, so the key can never reach stdout or stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import Any, TextIO

MASK = "********"


class Output:
    def __init__(self, *, pretty: bool = False, secrets: Iterable[str] = (),
                 stdout: TextIO | None = None, stderr: TextIO | None = None) -> None:
        self.pretty = pretty
        self._secrets = [s for s in secrets if s]
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr

    def redact(self, text: str) -> str:
        # The proxy may echo a key back in an error body; mask it wherever it shows up.
        for secret in self._secrets:
            text = text.replace(secret, MASK)
        return text

    def dumps(self, value: Any) -> str:
        if self.pretty:
            return json.dumps(value, ensure_ascii=False, indent=2)
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def json(self, value: Any) -> None:
        """One JSON document on stdout (one line unless --pretty)."""
        self.line(self.dumps(value))

    def line(self, text: str) -> None:
        self.write(text + "\n")

    def write(self, text: str) -> None:
        """Text on stdout as it comes (streamed deltas), flushed so a pipe sees it at once."""
        self.stdout.write(self.redact(text))
        self.stdout.flush()

    def note(self, text: str) -> None:
        """A message for the person at the terminal (stderr), never mixed into the machine output."""
        self.stderr.write(self.redact(text) + "\n")
        self.stderr.flush()

    def error(self, message: str) -> None:
        self.note(f"llmq: {message}")
