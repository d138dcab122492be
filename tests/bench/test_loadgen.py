"""The benchmark's load generator against a real loopback server: every request sent, every answer counted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from llmq.bench import loadgen


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the load generator expects
    seen: ClassVar[Counter[str]] = Counter()

    def _answer(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.seen[f"{self.command} {self.path} {body.decode()}"] += 1
        payload = b'{"ok": true}' * (100 if self.path == "/big" else 1)
        self.send_response(202 if self.command == "POST" else 200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _answer

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server_url() -> Iterator[str]:
    Handler.seen = Counter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_the_raw_client_sends_every_request_and_reads_every_answer(server_url: str) -> None:
    result = loadgen.run({"client": "raw", "method": "POST", "url": f"{server_url}/jobs", "headers": {},
                          "body": "hello", "n": 300, "concurrency": 8, "ok_status": [202]}, timeout_s=60)
    assert result["ok"] == 300 and result["errors"] == {}
    assert Handler.seen == Counter({"POST /jobs hello": 300})


def test_phases_run_in_turn_and_report_apart(server_url: str) -> None:
    phases = [{"method": "GET", "url": f"{server_url}/big", "body": None, "n": 50, "ok_status": [200]},
              {"method": "POST", "url": f"{server_url}/small", "body": "x", "n": 70, "ok_status": [202]}]
    result = loadgen.run({"client": "raw", "headers": {}, "concurrency": 4, "phases": phases}, timeout_s=60)
    assert [(p["n"], p["ok"]) for p in result["phases"]] == [(50, 50), (70, 70)]
    assert Handler.seen == Counter({"GET /big ": 50, "POST /small x": 70})


def test_an_unexpected_status_is_not_counted_as_served(server_url: str) -> None:
    result = loadgen.run({"client": "raw", "method": "GET", "url": f"{server_url}/x", "headers": {},
                          "body": None, "n": 20, "concurrency": 2, "ok_status": [202]}, timeout_s=60)
    assert result["ok"] == 0 and result["statuses"] == {"200": 20}
