"""A real HTTP server on loopback that plays a webhook receiver."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from llmq.devstack.redis_server import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """Answers with the queued status codes in order (then `default_status`), and records every request.

    With `drip_s`, a hostile receiver: it sends its status line at once, then one header line every
    `drip_every_s` for `drip_s` seconds, so no single read ever waits long, and only then ends the answer.
    `in_flight` counts the requests it is still answering, `answered` those it answered to the end.
    """

    def __init__(self, port: int | None = None, default_status: int = 200, drip_s: float = 0,
                 drip_every_s: float = 0.5) -> None:
        self.port = port or free_port()
        self.default_status = default_status
        self.drip_s = drip_s
        self.drip_every_s = drip_every_s
        self.statuses: deque[int] = deque()
        self.received: list[Received] = []
        self.in_flight = 0
        self.answered = 0
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    receiver.received.append(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.popleft() if receiver.statuses else receiver.default_status
                    receiver.in_flight += 1
                try:
                    self.send_response(status)
                    self._drip()
                    self.send_header("content-length", "0")
                    self.end_headers()
                    with receiver._lock:
                        receiver.answered += 1
                except OSError:  # the client gave up on us
                    pass
                finally:
                    with receiver._lock:
                        receiver.in_flight -= 1

            def _drip(self) -> None:
                self.flush_headers()
                until = time.monotonic() + receiver.drip_s
                n = 0
                while time.monotonic() < until and not receiver._stopping.wait(receiver.drip_every_s):
                    n += 1
                    self.wfile.write(f"x-drip-{n}: .\r\n".encode())
                    self.wfile.flush()

            def log_message(self, *_: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
