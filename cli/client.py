"""The llmq HTTP API, as used by the commands: every failure leaves as a CliError with its exit code."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import httpx2

from llmq.cli import __version__
from llmq.cli.errors import TERMINAL, ApiError, CliError, ExitCode
from llmq.cli.network import describe
from llmq.worker.sse import is_event_stream

MAX_WAIT_S = 60  # the API's longest ?wait
RETRY_STATUSES = frozenset({502, 503, 504})
# SSE keep-alives arrive every 15 s; a longer silence means the connection is gone.
EVENTS_READ_TIMEOUT_S = 45.0


class ApiClient:
    """A pooled client for one API base URL and one key; safe to share between threads."""

    def __init__(self, base_url: str, key: str | None, timeout_s: float, *, retries: int = 2,
                 max_connections: int = 64) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliError(f"--api must be an http(s) URL like http://127.0.0.1:8000, got {base_url!r}",
                           ExitCode.USAGE)
        self.base_url = base_url.rstrip("/")
        self.has_key = bool(key)
        self.timeout_s = timeout_s
        self.retries = retries
        headers = {"User-Agent": f"llmq-cli/{__version__}", "Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._host, self._port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        self._http = httpx2.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx2.Timeout(timeout_s),
            limits=httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # Jobs.

    def submit(self, job: dict[str, Any], idempotency_key: str) -> tuple[dict[str, Any], bool]:
        """POST /v1/jobs; the job and whether it was an idempotent replay of an earlier submission."""
        # With an Idempotency-Key a repeated POST returns the first job, so retrying is safe.
        response = self._request("POST", "/v1/jobs", json=job, headers={"Idempotency-Key": idempotency_key})
        return self._json(response), response.headers.get("Idempotent-Replayed") == "true"

    def get(self, job_id: str, wait_s: float = 0) -> dict[str, Any]:
        params = {"wait": f"{wait_s:.3f}"} if wait_s > 0 else None
        return self._json(self._request("GET", f"/v1/jobs/{job_id}", params=params, extra_read_s=wait_s))

    def cancel(self, job_id: str) -> dict[str, Any]:
        # A DELETE whose answer was lost would get 409 when repeated: only retry what never reached the API.
        return self._json(self._request("DELETE", f"/v1/jobs/{job_id}", repeatable=False))

    def wait(self, job_id: str, total_s: float = math.inf) -> dict[str, Any]:
        """The job once finished, or as it stands after `total_s` seconds of long-polling."""
        deadline = time.monotonic() + total_s
        while True:
            remaining = deadline - time.monotonic()
            job = self.get(job_id, wait_s=max(0.0, min(MAX_WAIT_S, remaining)))
            if job.get("status") in TERMINAL or deadline - time.monotonic() <= 0.05:
                return job

    @contextmanager
    def events(self, job_id: str, last_event_id: str | None) -> Iterator[Iterator[str]]:
        """GET /v1/jobs/{id}/events, yielding its lines; resumes after `last_event_id`."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx2.Timeout(self.timeout_s, read=max(self.timeout_s, EVENTS_READ_TIMEOUT_S))
        try:
            with self._http.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout) as response:
                if response.status_code != 200:
                    response.read()
                    raise self._api_error(response)
                content_type = response.headers.get("content-type")
                if not is_event_stream(content_type):
                    # Something between us and the API (a login page, a gateway) answered in its place.
                    raise CliError(f"{self.base_url} answered with {content_type or 'no content type'!r}, not an "
                                   "event stream: is it the llmq API? (check --api / LLMQ_API_URL)",
                                   ExitCode.UNREACHABLE)
                yield response.iter_lines()
        except httpx2.TransportError as err:
            raise self._unreachable(err) from err

    # Health.

    def readyz(self) -> tuple[int, dict[str, Any]]:
        """GET /readyz: its status code and body (503 is an answer here, not an error)."""
        try:
            response = self._http.get("/readyz")
        except httpx2.TransportError as err:
            raise self._unreachable(err) from err
        try:
            body = response.json()
        except ValueError:
            body = {}
        return response.status_code, body if isinstance(body, dict) else {}

    # The OpenAI Files and Batch API (llmq batch --batch-api).

    def upload_batch_file(self, filename: str, content: bytes, base: str = "/v1") -> dict[str, Any]:
        # Not repeated on a lost answer: a second upload would be a second file.
        response = self._request("POST", f"{base}/files", repeatable=False, data={"purpose": "batch"},
                                 files={"file": (filename, content, "application/jsonl")})
        return self._json(response)

    def create_batch(self, body: dict[str, Any], base: str = "/v1") -> dict[str, Any]:
        """`base` chooses the lines' environment (/v1, /test/v1, /prod/v1)."""
        return self._json(self._request("POST", f"{base}/batches", repeatable=False, json=body))

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        return self._json(self._request("GET", f"/v1/batches/{batch_id}"))

    def batches(self) -> Iterator[dict[str, Any]]:
        """Every batch of the key, newest first."""
        after: str | None = None
        while True:
            page = self._json(self._request("GET", "/v1/batches",
                                            params={"limit": 100, **({"after": after} if after else {})}))
            yield from page.get("data") or []
            if not page.get("has_more") or not page.get("data"):
                return
            after = page["data"][-1]["id"]

    def file_lines(self, file_id: str) -> Iterator[str]:
        """A file's lines, streamed."""
        with self._http.stream("GET", f"/v1/files/{file_id}/content") as response:
            if response.status_code >= 400:
                response.read()
                raise self._api_error(response)
            yield from (line for line in response.iter_lines() if line)


    def _request(self, method: str, path: str, *, repeatable: bool = True, extra_read_s: float = 0,
                 **kwargs: Any) -> httpx2.Response:
        timeout = httpx2.Timeout(self.timeout_s, read=self.timeout_s + extra_read_s)
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._http.request(method, path, timeout=timeout, **kwargs)
            except httpx2.TransportError as err:
                never_sent = isinstance(err, httpx2.ConnectError | httpx2.ConnectTimeout)
                if last or not (repeatable or never_sent):
                    raise self._unreachable(err) from err
                time.sleep(_backoff(attempt))
                continue
            if response.status_code in RETRY_STATUSES and repeatable and not last:
                time.sleep(_retry_after(response) or _backoff(attempt))
                continue
            if response.status_code >= 400:
                raise self._api_error(response)
            return response
        raise AssertionError("unreachable")

    def _unreachable(self, err: Exception) -> CliError:
        reason = describe(err, self._host, self._port, self.timeout_s)
        return CliError(f"cannot reach the llmq API at {self.base_url}: {reason} (check --api / LLMQ_API_URL)",
                        ExitCode.UNREACHABLE)

    def _api_error(self, response: httpx2.Response) -> CliError:
        error_type, message = "http_error", response.reason_phrase or "error"
        try:
            envelope = response.json().get("error") or {}
            error_type = str(envelope.get("type") or error_type)
            message = str(envelope.get("message") or message)
        except (ValueError, AttributeError):
            pass
        if response.status_code == 401 and not self.has_key:
            message += " No key was given: set LLMQ_KEY=appID:appKey or pass --key."
        return ApiError(response.status_code, error_type, message)

    def _json(self, response: httpx2.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise CliError(f"{self.base_url} answered {response.status_code} without a JSON object: "
                           "is --api pointing at the llmq API?", ExitCode.UNREACHABLE)
        return data


def _backoff(attempt: int) -> float:
    return min(0.5 * 2**attempt, 4.0)


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return min(float(response.headers.get("Retry-After", "")), 10.0)
    except ValueError:
        return None

