"""Child processes of the local run and the tests: started, logged to a file, stopped cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2

from llmq.api.head_limit import API_HTTP_PROTOCOL
from llmq.worker.redis_keys import QUEUES_IN_ORDER

VENV_BIN = Path(sys.executable).parent


class ManagedProcess:
    def __init__(
        self, name: str, args: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None
    ) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it for its whole life
        self.process = subprocess.Popen(
            self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, cwd=self.cwd,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_path.exists() and text in self.log_path.read_text(errors="replace"):
                return
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not log {text!r} within {timeout_s}s; see {self.log_path}")

    def wait_for_http(self, url: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx2.get(url, timeout=1.0).status_code < 500:
                    return
            except httpx2.HTTPError:
                pass
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early; see {self.log_path}")
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer {url} within {timeout_s}s; see {self.log_path}")

    def stop(self, timeout_s: float = 15.0) -> None:
        if not self.alive():
            return
        assert self.process is not None
        # The whole process group: Celery and uvicorn may have children of their own.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would: no cleanup, no acknowledgements."""
        if self.alive():
            assert self.process is not None
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def api_process(env: dict[str, str], port: int, log_path: Path, host: str = "127.0.0.1") -> ManagedProcess:
    # The HTTP protocol that bounds a request's head (llmq.api.head_limit), as every deployment file runs it.
    args = [str(VENV_BIN / "uvicorn"), "--factory", "llmq.api.main:app_from_env", "--http", API_HTTP_PROTOCOL,
            "--host", host, "--port", str(port), "--no-access-log", "--timeout-graceful-shutdown", "5"]
    return ManagedProcess("api", args, env, log_path)


def worker_process(env: dict[str, str], log_path: Path, name: str = "worker", *extra: str) -> ManagedProcess:
    args = [str(VENV_BIN / "celery"), "-A", "llmq.worker.celery_app", "worker", "-Q", ",".join(QUEUES_IN_ORDER),
            "--hostname", f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "INFO", *extra]
    return ManagedProcess(name, args, env, log_path)


def mock_process(env: dict[str, str], port: int, log_path: Path, *extra: str) -> ManagedProcess:
    args = [sys.executable, "-m", "llmq.mockproxy", "--host", "127.0.0.1", "--port", str(port), *extra]
    return ManagedProcess("mock-proxy", args, env, log_path)


def flower_process(env: dict[str, str], port: int, log_path: Path, *extra: str) -> ManagedProcess:
    args = [str(VENV_BIN / "celery"), "-A", "llmq.worker.celery_app", "flower", f"--port={port}", "--address=127.0.0.1",
            *extra]
    return ManagedProcess("flower", args, env, log_path)
