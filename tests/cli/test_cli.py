"""The `llmq` command line, run as a real process against a real stack and the mock proxy."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from llmq.cli.batch import idempotency_key, parse_input
from llmq.cli.keys import resolve_key, secrets_of
from llmq.cli.output import Output
from llmq.devstack.redis_server import free_port
from tests.stack import CALLER_APP_KEY, CALLER_KEY, MockProxy, Stack

ROOT = Path(__file__).resolve().parents[2]
JOB_ID = re.compile(r"job_[A-Za-z0-9_-]{22}")
Run = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(*args: str, api: str, key: str | None = CALLER_KEY, stdin: str | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m llmq.cli ...` with a clean environment; the appKey must never show up in what it prints."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LLMQ_", "TAL_MLOPS_"))}
    environ["LLMQ_API_URL"] = api
    if key is not None:
        environ["LLMQ_KEY"] = key
    environ.update(env or {})
    result = subprocess.run([sys.executable, "-m", "llmq.cli", *args], cwd=ROOT, env=environ, input=stdin,
                            capture_output=True, text=True, timeout=60)
    assert CALLER_APP_KEY not in result.stdout + result.stderr
    return result


@pytest.fixture
def llmq(stack: Stack) -> Run:
    def run(*args: str, **options: Any) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, api=stack.base_url, **options)

    return run


def submit_id(llmq: Run, *args: str) -> str:
    result = llmq("submit", *args)
    assert result.returncode == 0, result.stderr
    assert JOB_ID.fullmatch(result.stdout.strip()), result.stdout
    return result.stdout.strip()


@pytest.mark.parametrize(("flag", "environ", "source", "key"), [
    ("1:flag", {"LLMQ_KEY": "2:env"}, "--key", "1:flag"),
    (None, {"LLMQ_KEY": "2:env", "TAL_MLOPS_APP_KEY": "3:whole"}, "LLMQ_KEY", "2:env"),
    (None, {"TAL_MLOPS_APP_KEY": "3:whole"}, "TAL_MLOPS_APP_KEY", "3:whole"),
    (None, {"TAL_MLOPS_APP_ID": "4", "TAL_MLOPS_APP_KEY": "half"}, "TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY", "4:half"),
    (None, {"LLMQ_KEY": "", "TAL_MLOPS_APP_ID": ""}, "none", None),
])
def test_the_key_comes_from_the_flag_then_the_guides_variables(
    flag: str | None, environ: dict[str, str], source: str, key: str | None
) -> None:
    choice = resolve_key(flag, environ)
    assert (choice.source, choice.key, choice.problem) == (source, key, None)


def test_a_malformed_key_is_explained_and_masked() -> None:
    assert "missing" in (resolve_key(None, {"TAL_MLOPS_APP_ID": "4"}).problem or "")
    for bad in ("noColonAtAll", "1:two:colons", ":emptyid", "1: space"):
        assert "'appID:appKey'" in (resolve_key(bad, {}).problem or ""), bad
    choice = resolve_key(CALLER_KEY, {})
    out = Output(secrets=secrets_of(choice))
    assert CALLER_APP_KEY not in out.redact(f"echoed {CALLER_KEY} back") + choice.describe()
    assert CALLER_APP_KEY not in Output(secrets=secrets_of(resolve_key(CALLER_APP_KEY, {}))).redact(CALLER_APP_KEY)


def test_batch_lines_are_validated_one_by_one() -> None:
    good = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    lines = [
        json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": good}),
        "",
        json.dumps(good),
        json.dumps({"custom_id": "b", "url": "/v1/embeddings", "body": good}),
        json.dumps({"custom_id": "a", "body": good}),
        json.dumps({"custom_id": "c", "body": {"model": "m", "messages": [{"content": "no role"}]}}),
        "{oops",
    ]
    items = parse_input("\n".join(lines))
    assert [(i.line, i.custom_id, i.invalid is None) for i in items] == [
        (1, "a", True), (3, "3", True), (4, "b", False), (5, "a", False), (6, "c", False), (7, "7", False)]
    assert "url must be /v1/chat/completions" in (items[2].invalid or "")
    assert "repeats line 1" in (items[3].invalid or "")
    assert "body.messages[0].role" in (items[4].invalid or "")
    assert len(idempotency_key("f" * 64, "x" * 300)) <= 255


def test_usage_errors_exit_2_without_the_api() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    result = run_cli("submit", "--message", "no model", api=closed)
    assert result.returncode == 2
    assert result.stderr.startswith("llmq: submit needs --model")
    assert run_cli("get", "job_x", "--wait", "-1", api=closed).returncode == 2
    malformed = run_cli("get", "job_x", api=closed, key=CALLER_APP_KEY)
    assert malformed.returncode == 2 and "appID:appKey" in malformed.stderr


def test_unreachable_api_exits_5() -> None:
    result = run_cli("get", "job_" + "a" * 22, api=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 5
    assert "llmq: cannot reach the llmq API" in result.stderr and "connection refused" in result.stderr


def test_submit_prints_the_id_and_get_waits(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 2000})
    job_id = submit_id(llmq, "--model", model, "--message", "hi")

    now = llmq("get", job_id)
    assert now.returncode == 0 and json.loads(now.stdout)["status"] in ("queued", "running")

    done = llmq("get", job_id, "--wait", "30")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["id"] == job_id and job["status"] == "succeeded"
    assert job["result"]["choices"][0]["message"]["content"] == "Echo: hi"


def test_submit_wait_prints_the_finished_job(llmq: Run, model: str) -> None:
    result = llmq("submit", "--model", model, "--system", "be brief", "--message", "hello there",
                  "--param", "temperature=0.2", "--metadata", "ticket=42", "--priority", "high", "--wait", "--pretty")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert "\n  " in result.stdout  # --pretty
    assert job["status"] == "succeeded" and job["priority"] == "high" and job["metadata"] == {"ticket": 42}
    assert job["result"]["choices"][0]["message"]["content"] == "Echo: hello there"


def test_submit_a_job_file_from_stdin(llmq: Run, model: str) -> None:
    body = {"request": {"model": model, "messages": [{"role": "user", "content": "from a file"}]},
            "priority": "low", "metadata": {"source": "file"}}
    result = llmq("submit", "--file", "-", "--json", stdin=json.dumps(body))
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["priority"] == "low" and job["metadata"] == {"source": "file"} and job["status"] == "queued"


def test_cancel_then_cancel_again(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 3000})
    job_id = submit_id(llmq, "--model", model, "--message", "slow")

    first = llmq("cancel", job_id)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["status"] == "cancelled"

    again = llmq("cancel", job_id)
    assert again.returncode == 4
    assert again.stderr.startswith("llmq: ") and "already finished" in again.stderr and "409" in again.stderr
    assert llmq("get", job_id, "--wait", "5").returncode == 3


def test_a_job_whose_retry_would_start_after_its_deadline_exits_7(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 503, "headers": {"Retry-After": "4"}})
    deadline = (datetime.now(UTC) + timedelta(seconds=2.5)).isoformat()
    result = llmq("submit", "--model", model, "--message", "x", "--deadline", deadline, "--wait", "30")
    assert result.returncode == 7, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "expired" and [a["outcome"] for a in job["attempts"]] == ["http_503"]
    assert "expired at its deadline" in result.stderr


def test_a_job_the_proxy_refuses_exits_1(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 400, "body": {"error": {"message": "bad temperature"}}})
    result = llmq("submit", "--model", model, "--message", "x", "--wait", "30")
    assert result.returncode == 1, result.stderr
    job = json.loads(result.stdout)
    assert job["status"] == "failed" and job["error"]["status_code"] == 400
    assert "bad temperature" in result.stderr


def test_watch_a_streaming_job_with_a_retry(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 500})
    job_id = submit_id(llmq, "--model", model, "--message", "watch me", "--stream")
    result = llmq("watch", job_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: watch me\n"
    for note in ("[running attempt 1]", "[retrying in ", "http_500]", "[running attempt 2]", "[succeeded]"):
        assert note in result.stderr
    events = llmq("watch", job_id, "--json")
    assert events.returncode == 0
    kinds = [json.loads(line)["type"] for line in events.stdout.splitlines()]
    assert kinds[-1] == "state" and "delta" in kinds


def test_batch_writes_results_in_input_order_and_reruns_without_new_jobs(
    llmq: Run, mock_proxy: MockProxy, model: str, tmp_path: Path
) -> None:
    def line(custom_id: str, text: str) -> str:
        body = {"model": model, "messages": [{"role": "user", "content": text}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join([
        line("alpha", "one"),
        line("beta", "two"),
        json.dumps({"custom_id": "broken", "body": {"model": model, "messages": []}}),
        json.dumps({"model": model, "messages": [{"role": "user", "content": "four"}]}),  # custom_id = line number
        line("epsilon", "five"),
    ]) + "\n")

    first = llmq("batch", str(source), "--no-progress")
    assert first.returncode == 1, first.stderr  # one line is invalid
    assert "line 3: body.messages must be a non-empty list" in first.stderr
    summary = json.loads(first.stdout)
    assert summary["output"] == str(tmp_path / "requests.out.jsonl")
    assert (summary["total"], summary["succeeded"], summary["invalid"]) == (5, 4, 1)

    records = [json.loads(text) for text in (tmp_path / "requests.out.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in records] == ["alpha", "beta", "broken", "4", "epsilon"]
    texts = {"alpha": "one", "beta": "two", "4": "four", "epsilon": "five"}
    for record in records:
        if record["custom_id"] == "broken":
            assert record["id"] is None and record["response"] is None
            assert record["error"]["code"] == "invalid_request" and "line 3" in record["error"]["message"]
            continue
        assert JOB_ID.fullmatch(record["id"]) and record["error"] is None
        assert record["response"]["status_code"] == 200
        body = record["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == f"Echo: {texts[record['custom_id']]}"
    assert len(mock_proxy.calls(model)) == 4

    again = llmq("batch", str(source), "-o", str(tmp_path / "again.jsonl"), "--no-progress")
    assert again.returncode == 1
    rerun = [json.loads(text) for text in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rerun] == [r["id"] for r in records]
    assert len(mock_proxy.calls(model)) == 4  # no new job, no new proxy call


def test_batch_through_the_batch_api_reports_bad_lines_and_reruns_without_new_work(
    llmq: Run, mock_proxy: MockProxy, model: str, tmp_path: Path
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "one"}]}
    source = tmp_path / "requests.jsonl"
    source.write_text("\n".join([
        json.dumps({"custom_id": "alpha", "method": "POST", "url": "/v1/chat/completions", "body": body}),
        json.dumps({"custom_id": "broken", "body": {"model": model, "messages": []}}),
        json.dumps({"model": model, "messages": [{"role": "user", "content": "three"}]}),  # custom_id = "3"
    ]) + "\n")

    first = llmq("batch", str(source), "--batch-api", "--no-progress")
    assert first.returncode == 1, first.stderr  # one line is invalid: reported, and the others run
    assert "line 2: body.messages must be a non-empty list" in first.stderr
    summary = json.loads(first.stdout)
    assert summary["batch"].startswith("batch_") and summary["status"] == "completed"
    assert (summary["total"], summary["succeeded"], summary["invalid"]) == (3, 2, 1)
    records = [json.loads(text) for text in (tmp_path / "requests.out.jsonl").read_text().splitlines()]
    assert [r["custom_id"] for r in records] == ["alpha", "broken", "3"]
    assert records[0]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: one"
    assert records[1]["error"]["code"] == "invalid_request"
    assert records[2]["response"]["body"]["choices"][0]["message"]["content"] == "Echo: three"
    assert len(mock_proxy.calls(model)) == 2

    again = llmq("batch", str(source), "--batch-api", "-o", str(tmp_path / "again.jsonl"), "--no-progress")
    assert json.loads(again.stdout)["batch"] == summary["batch"]  # the same batch, found again
    assert (tmp_path / "again.jsonl").read_text() == (tmp_path / "requests.out.jsonl").read_text()
    assert len(mock_proxy.calls(model)) == 2  # no new work


def test_doctor_passes_against_the_mock(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    result = llmq("doctor", "--base-url", mock_proxy.url, "--model", model)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("key", "base URL", "DNS", "network", "proxy", "llmq API"):
        assert any(re.match(rf"ok\s+{re.escape(name)}\s", text) for text in lines), (name, result.stdout)
    assert "appID 7788" in result.stdout and f"({len(CALLER_APP_KEY)} characters)" in result.stdout


def test_doctor_names_the_key_format(llmq: Run, mock_proxy: MockProxy) -> None:
    result = llmq("doctor", "--base-url", mock_proxy.url, key=CALLER_APP_KEY)
    assert result.returncode == 1
    assert re.search(r"FAIL\s+key\s.*'appID:appKey'", result.stdout), result.stdout
    assert re.search(r"skip\s+proxy\s", result.stdout)


def test_doctor_says_a_closed_port_is_unreachable(llmq: Run) -> None:
    result = llmq("doctor", "--base-url", f"http://127.0.0.1:{free_port()}/openai-compatible/v1", "--json")
    assert result.returncode == 1
    checks = {check["name"]: check for check in json.loads(result.stdout)["checks"]}
    assert checks["network"]["status"] == "FAIL" and "unreachable" in checks["network"]["detail"]
    assert "connection refused" in checks["network"]["detail"]


def test_doctor_reports_a_refused_key(llmq: Run, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "status", "status": 401, "body": {"error": {"message": "invalid app key"}}})
    result = llmq("doctor", "--base-url", mock_proxy.url, "--model", model)
    assert result.returncode == 1
    assert re.search(r"FAIL\s+proxy\s+the proxy refused the key \(HTTP 401: invalid app key\)", result.stdout)
    assert "check appID:appKey" in result.stdout


class CuttingRelay:
    """A TCP relay to the API that drops the first connection once an event has passed through it."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.requests: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.server.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.server.accept()
                cut = not self.requests
                self.requests.append(b"")
                threading.Thread(target=self._serve, args=(client, len(self.requests) - 1, cut), daemon=True).start()

    def _serve(self, client: socket.socket, index: int, cut: bool) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def pump_requests() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    self.requests[index] += data
                    upstream.sendall(data)

        threading.Thread(target=pump_requests, daemon=True).start()
        with contextlib.suppress(OSError), client, upstream:
            while data := upstream.recv(65536):
                client.sendall(data)
                if cut and b"event: " in data:
                    break  # the client sees the stream break mid-job
            # shutdown, not just close: it wakes the other thread's recv and sends the FIN at once.
            for sock in (client, upstream):
                sock.shutdown(socket.SHUT_RDWR)


def test_watch_resumes_after_a_dropped_connection(stack: Stack, mock_proxy: MockProxy, model: str) -> None:
    mock_proxy.script(model, {"kind": "ok", "latency_ms": 1500})
    job_id = submit_id(lambda *args: run_cli(*args, api=stack.base_url),
                       "--model", model, "--message", "resume me", "--stream")
    relay = CuttingRelay(stack.port)
    try:
        result = run_cli("watch", job_id, api=relay.url)
    finally:
        relay.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: resume me\n"
    assert "[reconnecting: " in result.stderr
    assert result.stderr.count("[running attempt 1]") == 1 and result.stderr.count("[succeeded]") == 1
    assert len(relay.requests) == 2
    assert b"last-event-id: " in relay.requests[1].lower()


def test_watch_shows_the_answer_of_a_job_that_was_not_streamed(llmq: Run, model: str) -> None:
    job_id = submit_id(llmq, "--model", model, "--message", "plain")
    result = llmq("watch", job_id)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Echo: plain\n" and "[succeeded]" in result.stderr


def test_watch_says_so_when_the_answer_is_not_an_event_stream() -> None:
    """Something in the API's place (a gateway's login page) answers 200 with HTML: a clear error, not a hang."""

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html><body>Please sign in</body></html>"
            self.send_response(200)
            self.send_header("content-type", "text/html; charset=utf-8")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        result = run_cli("watch", "job_" + "a" * 22, "--max-reconnects", "0",
                         api=f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == 5
    assert "answered with 'text/html; charset=utf-8', not an event stream" in result.stderr
