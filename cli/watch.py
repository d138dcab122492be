"""`llmq watch`: follow a job's events live; text to stdout, state changes to stderr."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from llmq.cli.client import ApiClient
from llmq.cli.context import Context
from llmq.cli.errors import TERMINAL, CliError, ExitCode, exit_for_status
from llmq.cli.output import Output
from llmq.worker.sse import iter_events

# A connection that lasted this long was healthy even without events (the server ends each one
# after a while and expects a resume); only quick failures count against the reconnect budget.
HEALTHY_CONNECTION_S = 30.0


class Follower:
    """Turns events into output, tracking the attempt so a new attempt's text starts over."""

    def __init__(self, out: Output, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.attempt = 0
        self.text_open = False  # text printed on stdout without a final newline
        self.attempt_has_text = False  # the current attempt has printed text that a new attempt replaces
        self.tool_calls_named: set[tuple[int, int]] = set()

    def handle(self, kind: str, event: dict[str, Any]) -> str | None:
        """Show one event; the final status once the job has ended."""
        if self.as_json:
            self.out.json(event)
        elif kind == "delta":
            self._delta(event)
        elif kind == "state":
            self._state(event)
        status = event.get("status")
        return status if kind == "state" and status in TERMINAL else None

    def close(self) -> None:
        if self.text_open:
            self.out.write("\n")
            self.text_open = False

    def show_text(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.text_open = self.attempt_has_text = True

    def _state(self, event: dict[str, Any]) -> None:
        status = event.get("status")
        if status == "running":
            attempt = int(event.get("attempt") or 0)
            if attempt > self.attempt:
                self.close()
                if self.attempt_has_text:
                    self.out.note(f"[attempt {attempt} starts over: the text above was from attempt {self.attempt}]")
                self.attempt, self.attempt_has_text = attempt, False
            self.out.note(f"[running attempt {attempt}]")
            return
        self.close()
        if status == "retrying":
            delay = float(event.get("retry_in_s") or 0)
            self.out.note(f"[retrying in {delay:.1f}s: {event.get('reason') or 'error'}]")
        elif status in ("failed", "expired"):
            error = event.get("error") or {}
            self.out.note(f"[{status}: {error.get('type', 'error')}: {error.get('message', '')}]")
        else:
            self.out.note(f"[{status}]")

    def _delta(self, event: dict[str, Any]) -> None:
        attempt = int(event.get("attempt") or 0)
        if attempt < self.attempt:
            return  # a late delta of an attempt that has been replaced
        if attempt > self.attempt:
            # Its `running` event was not seen (history trimmed): the attempt still starts over.
            self._state({"status": "running", "attempt": attempt})
        if event.get("index", 0) != 0:
            return  # only the first choice is shown; the job's result has all of them
        for fragment in event.get("tool_calls") or []:
            name = (fragment.get("function") or {}).get("name")
            key = (attempt, int(fragment.get("index") or 0))
            if name and key not in self.tool_calls_named:
                self.tool_calls_named.add(key)
                self.close()
                self.out.note(f"[tool call: {name}]")
        content = event.get("content")
        if isinstance(content, str):
            self.show_text(content)


def follow(client: ApiClient, job_id: str, follower: Follower, max_reconnects: int, out: Output) -> str:
    """Events until the terminal one, resuming with Last-Event-ID; the job's final status."""
    last_id: str | None = None
    failures = 0
    while True:
        opened = time.monotonic()
        got_event = False
        try:
            with client.events(job_id, last_id) as lines:
                for event in iter_events(lines):
                    data = _parse(event.data)
                    if not data:
                        continue  # e.g. the half of an event a dropped connection left: it comes again on resume
                    if event.id:
                        last_id = event.id
                    got_event = True
                    final = follower.handle(event.event, data)
                    if final:
                        return final
            reason = "the stream ended before the job did"
        except CliError as err:
            if err.code != ExitCode.UNREACHABLE:
                raise
            reason = err.message
        if got_event or time.monotonic() - opened > HEALTHY_CONNECTION_S:
            failures = 0
        failures += 1
        if failures > max_reconnects:
            raise CliError(f"lost the events of job {job_id} after {max_reconnects} reconnects: {reason}",
                           ExitCode.UNREACHABLE)
        follower.close()
        out.note(f"[reconnecting: {reason}]")
        time.sleep(min(0.5 * 2 ** (failures - 1), 5.0))


def run(ctx: Context, args: argparse.Namespace) -> int:
    follower = Follower(ctx.out, args.json)
    with ctx.client() as client:
        try:
            final = follow(client, args.job_id, follower, args.max_reconnects, ctx.out)
            if final == "succeeded" and not follower.attempt_has_text and not args.json:
                # A job that was not streamed sends no deltas: show its answer at the end.
                follower.show_text(_answer_text(client.get(args.job_id)))
        finally:
            follower.close()
    return exit_for_status(final)


def _parse(data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError:
        return {}
    return event if isinstance(event, dict) else {}


def _answer_text(job: dict[str, Any]) -> str:
    """The first choice's text of a finished job (empty for tool calls or an unusual result)."""
    try:
        content = job["result"]["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        return ""
    return content if isinstance(content, str) else ""
