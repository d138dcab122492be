"""A request's head is bounded by the API's HTTP server: over `LLMQ_MAX_HEAD_BYTES`, 431 before it is read whole.

Through a real API process, on raw sockets (HTTP clients refuse to send such heads). The memory a 30 MB header
costs is read from the process's peak resident set (`VmHWM`, reset through `/proc/PID/clear_refs` before the
request), so a header buffered and then freed again still shows.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmq.devstack.redis_server import RedisServer
from llmq.worker.settings import Settings
from tests.stack import CALLER_KEY, Stack, chat

LIMIT = Settings.model_fields["max_head_bytes"].default
HUGE = 30 * 1024 * 1024
# What a head may cost the process besides itself: the 431, a log line, the parser's last chunks.
HEAD_COST_SLACK = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The API process alone, with the default limit, on a Redis of its own (no worker: jobs stay queued)."""
    log_dir: Path = tmp_path_factory.mktemp("head-limit-api")
    with RedisServer(appendonly=False) as redis_server:
        stack = Stack(redis_server.url, "http://127.0.0.1:9/openai-compatible/v1", log_dir)
        try:
            yield stack.start_api()
        finally:
            stack.stop()


def head(target: str = "/healthz", *headers: bytes, method: str = "GET", body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", *headers]
    if body:
        lines += [b"Content-Type: application/json", b"Content-Length: %d" % len(body)]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one answer (by its Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data[:200]!r}"
        data += chunk
    head_bytes, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, value in (line.split(":", 1) for line in header_lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return int(status_line.split()[1]), headers, body


def exchange(port: int, *requests: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Each request in turn on one connection, with its answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        answers = []
        for request in requests:
            sock.sendall(request)
            answers.append(read_answer(sock))
        return answers


def peak_rss_reset(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) * 1024


def rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1]) * 1024


def send_huge(port: int, request_start: bytes) -> tuple[int, bytes]:
    """`request_start`, then HUGE bytes of the same head: how many the server took, and what it answered."""
    sent = 0
    block = b"k" * (256 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        try:
            sock.sendall(request_start)
            while sent < HUGE:
                sock.sendall(block)
                sent += len(block)
            sock.sendall(b"\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return sent, answer


def assert_refused(answer: bytes) -> None:
    """A 431 naming the limit, or (when the server's close reset the connection first) nothing."""
    if answer:
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"431", status_line
        assert b"LLMQ_MAX_HEAD_BYTES" in rest


@pytest.mark.parametrize("request_start", [
    pytest.param(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer 1234:", id="header"),
    pytest.param(b"GET /healthz?pad=", id="request-target"),
])
def test_a_30_mb_head_is_refused_before_it_is_read(api: Stack, request_start: bytes) -> None:
    assert api.api is not None
    pid = api.api.pid
    peak_rss_reset(pid)
    before = rss(pid)
    sent, answer = send_huge(api.port, request_start)
    peak = peak_rss(pid)
    # The server closed the connection long before the head's end: the socket buffers between the two
    # hold a few MB at most.
    assert sent < HUGE
    assert_refused(answer)
    assert peak - before < HEAD_COST_SLACK, (before, peak)
    # The same server goes on answering.
    [(status, _, _)] = exchange(api.port, head())
    assert status == 200


def padding(size: int) -> bytes:
    """An `X-Padding` header that makes `head("/healthz", ...)` count `size` bytes: target, names and values."""
    return b"X-Padding: " + b"p" * (size - len(b"/healthz") - len(b"host127.0.0.1") - len(b"x-padding"))


@pytest.mark.parametrize("size", [LIMIT, LIMIT + 1])
def test_the_limit_counts_the_target_and_headers(api: Stack, size: int) -> None:
    [(status, headers, body)] = exchange(api.port, head("/healthz", padding(size)))
    if size <= LIMIT:
        assert status == 200
    else:
        assert status == 431
        assert headers["content-type"] == "application/json" and headers["connection"] == "close"
        error = json.loads(body)["error"]
        assert error["type"] == "header_too_large"
        assert f"{LIMIT} bytes (LLMQ_MAX_HEAD_BYTES)" in error["message"]


def test_a_head_of_a_few_chunks_over_the_limit_is_refused(api: Stack) -> None:
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as sock:
        try:
            sock.sendall(head("/healthz", padding(LIMIT + 300_000)))
            answer = b"".join(iter(lambda: sock.recv(65536), b""))
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
    assert_refused(answer)


def test_many_small_headers_count_together(api: Stack) -> None:
    headers = [b"X-Field-%d: %s" % (i, b"v" * 100) for i in range(LIMIT // 100)]
    [(status, _, _)] = exchange(api.port, head("/healthz", *headers))
    assert status == 431


def test_heads_are_counted_per_request_and_bodies_are_not_heads(api: Stack) -> None:
    """On one connection: a job with a 1 MB body (sent with its head at once), a head near the limit, then one
    over it. Each head is counted from its own start."""
    body = json.dumps({"request": chat("head-limit-model", "x" * 1024 * 1024)}).encode()
    near = b"X-Padding: " + b"p" * (LIMIT - 2048)
    answers = exchange(api.port, head("/v1/jobs", f"Authorization: Bearer {CALLER_KEY}".encode(), method="POST",
                                      body=body),
                       head("/healthz", near), head("/healthz", near), head("/healthz", near + b"p" * 4096))
    assert [status for status, _, _ in answers] == [202, 200, 200, 431]
