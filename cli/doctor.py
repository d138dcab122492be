"""`llmq doctor`: the proxy guide's troubleshooting list (key, base URL, model, network), checked for real."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx2

from llmq.cli import __version__
from llmq.cli.client import ApiClient
from llmq.cli.context import Context
from llmq.cli.errors import CliError, ExitCode
from llmq.cli.keys import KEY_FORMAT, KEY_HELP
from llmq.cli.network import describe, resolve, tcp_connect
from llmq.worker.proxy.errors import proxy_error_message

DEFAULT_MODEL = "gemini-1.5-pro"
BASE_PATH = "/openai-compatible/v1"
TCP_TIMEOUT_S = 3.0
OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass
class Target:
    url: str
    source: str
    host: str
    port: int


class Doctor:
    def __init__(self, ctx: Context, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.ctx = ctx
        self.args = args
        self.environ = environ
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str, fix: str | None = None) -> Check:
        check = Check(name, status, detail, fix)
        self.checks.append(check)
        return check

    def run(self) -> list[Check]:
        key_ok = self.check_key()
        target = self.check_base_url()
        reachable = target is not None and self.check_network(target)
        if target is None or not reachable or not key_ok:
            missing = "a usable key" if not key_ok else "a reachable base URL"
            self.add("proxy", SKIP, f"key and model not tried: needs {missing} first")
        else:
            self.check_proxy(target)
        self.check_api()
        return self.checks

    # 1. The key.

    def check_key(self) -> bool:
        choice = self.ctx.key
        if choice.key is None:
            self.add("key", FAIL, choice.problem or "no key found", KEY_HELP)
            return False
        if choice.problem:
            self.add("key", FAIL, choice.problem, f"use the form {KEY_FORMAT}: {KEY_HELP}")
            return False
        self.add("key", OK, choice.describe())
        return True

    # 2. The base URL.

    def check_base_url(self) -> Target | None:
        url, source = self._base_url()
        if not url:
            self.add("base URL", FAIL, f"no proxy base URL ({source})",
                     f"pass --base-url http://<host>{BASE_PATH}, or set LLMQ_UPSTREAM_TEST_URL / "
                     "LLMQ_UPSTREAM_PROD_URL")
            return None
        url = url.rstrip("/")
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            port = 0
        if parts.scheme not in ("http", "https") or not parts.hostname or not port:
            self.add("base URL", FAIL, f"{url} (from {source}) is not an http(s) URL with a host and a valid port",
                     f"write it as in the guide: http://<host>{BASE_PATH}")
            return None
        if parts.query or parts.fragment:
            self.add("base URL", FAIL, f"{url} (from {source}) has a query or fragment",
                     f"the base URL is just http://<host>{BASE_PATH}")
            return None
        if parts.path.endswith("/chat/completions"):
            self.add("base URL", WARN, f"{url} (from {source}) includes /chat/completions",
                     f"end the base URL at {BASE_PATH}: /chat/completions is added to it for every call")
        elif not parts.path.endswith(BASE_PATH):
            self.add("base URL", WARN, f"{url} (from {source}) does not end with {BASE_PATH}",
                     f"the guide's base URLs are http://<host>{BASE_PATH}")
        else:
            self.add("base URL", OK, f"{url} (from {source})")
        return Target(url, source, parts.hostname, port)

    def _base_url(self) -> tuple[str | None, str]:
        if self.args.base_url:
            return self.args.base_url, "--base-url"
        environment = self.args.environment or self.environ.get("LLMQ_UPSTREAM_DEFAULT_ENV") or "test"
        variable = f"LLMQ_UPSTREAM_{environment.upper()}_URL"
        return self.environ.get(variable) or None, variable

    # 4. The network (before 3, which needs it).

    def check_network(self, target: Target) -> bool:
        try:
            addresses = resolve(target.host, target.port)
        except OSError as err:
            self.add("DNS", FAIL, describe(err, target.host, target.port),
                     f"check the host name in {target.source}, and your DNS or VPN")
            return False
        if addresses == [target.host]:
            self.add("DNS", OK, f"{target.host} is an IP address (no lookup needed)")
        else:
            self.add("DNS", OK, f"{target.host} resolves to {', '.join(addresses[:3])}")
        timeout_s = min(self.ctx.timeout_s, TCP_TIMEOUT_S)
        try:
            tcp_connect(target.host, target.port, timeout_s)
        except OSError as err:
            reason = describe(err, target.host, target.port, timeout_s)
            self.add("network", FAIL, f"{target.host}:{target.port} is unreachable: {reason}",
                     f"check the port in {target.source}, that the proxy is up, and firewall/VPN rules")
            return False
        self.add("network", OK, f"{target.host}:{target.port} accepts connections")
        return True

    # 3. The key and the model, by the proxy itself.

    def check_proxy(self, target: Target) -> None:
        model = self.args.model
        body = {"model": model, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
        headers = {"Authorization": f"Bearer {self.ctx.key.key}", "Content-Type": "application/json",
                   "Accept": "application/json", "User-Agent": f"llmq-cli/{__version__}"}
        started = time.monotonic()
        try:
            with httpx2.Client(timeout=self.ctx.timeout_s, follow_redirects=False) as client:
                response = client.post(f"{target.url}/chat/completions", json=body, headers=headers)
        except httpx2.TimeoutException as err:
            self.add("proxy", WARN, describe(err, target.host, target.port, self.ctx.timeout_s),
                     "the proxy is slow or overloaded: try again, or with a longer --timeout")
            return
        except httpx2.TransportError as err:
            self.add("proxy", FAIL, describe(err, target.host, target.port),
                     "check the network path to the proxy (proxy settings, firewall, VPN)")
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        self._judge(response, model, elapsed_ms)

    def _judge(self, response: httpx2.Response, model: str, elapsed_ms: float) -> None:
        status = response.status_code
        message = (proxy_error_message(response.content) or response.reason_phrase or "no message")[:300]
        said = f"HTTP {status}: {message}"
        if 200 <= status < 300:
            try:
                data: Any = response.json()
            except ValueError:
                content_type = response.headers.get("content-type", "none")
                self.add("proxy", FAIL, f"HTTP {status} but the body is not JSON (content-type {content_type})",
                         f"the base URL points at something that is not the proxy: use http://<host>{BASE_PATH}")
                return
            if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                self.add("proxy", FAIL, f"HTTP {status} but not a chat completion ({message})",
                         f"the base URL points at something that is not the proxy: use http://<host>{BASE_PATH}")
                return
            self.add("proxy", OK, f"the proxy accepted the key and answered for model {model} ({elapsed_ms:.0f} ms)")
        elif 300 <= status < 400:
            self.add("proxy", FAIL, f"HTTP {status}: redirected to {response.headers.get('location', '?')}",
                     "use the final URL as the base URL (redirects are not followed for POST)")
        elif status in (401, 403):
            self.add("proxy", FAIL, f"the proxy refused the key ({said})",
                     f"check appID:appKey: the appID and appKey of your platform application, {KEY_FORMAT}")
        elif status < 500 and status != 429 and "model" in message.lower():
            self.add("proxy", FAIL, f"model {model!r} not supported ({said})",
                     "choose a model the proxy supports (--model)")
        elif status == 404:
            self.add("proxy", FAIL, f"model {model!r} not supported, or the base URL path is wrong ({said})",
                     f"choose a model the proxy supports (--model), and check the path ends in {BASE_PATH}")
        elif status == 429:
            self.add("proxy", WARN, f"the proxy is rate limiting ({said}); key and model not confirmed",
                     "try again in a moment")
        elif status >= 500:
            self.add("proxy", WARN, f"the proxy had an error ({said}); key and model not confirmed",
                     "try again later; if it persists, contact the proxy's support")
        else:
            self.add("proxy", FAIL, f"the proxy rejected the test request ({said})",
                     "read the proxy's message above")

    # 5. The llmq API.

    def check_api(self) -> None:
        url = self.ctx.api_url
        try:
            # /readyz needs no key, so this check stands even when the key is wrong.
            with ApiClient(url, None, self.ctx.timeout_s, retries=0) as client:
                status, body = client.readyz()
        except CliError as err:
            status_word = FAIL if self.ctx.api_url_given or err.code == ExitCode.USAGE else WARN
            self.add("llmq API", status_word, err.message.removeprefix("cannot reach the llmq API at "),
                     "start it (make run) or point --api / LLMQ_API_URL at it")
            return
        self._judge_ready(url, status, body)

    def _judge_ready(self, url: str, status: int, body: dict[str, Any]) -> None:
        checks = body.get("checks") or {}
        if status == 200 and body.get("ok"):
            self.add("llmq API", OK, f"{url} is ready")
        elif status == 503:
            broken = ", ".join(f"{name} {state}" for name, state in checks.items() if state != "ok")
            self.add("llmq API", FAIL, f"{url} is up but not ready ({broken or 'see /readyz'})",
                     "check Redis and the broker the API is configured with (LLMQ_REDIS_URL, LLMQ_BROKER_URL)")
        else:
            self.add("llmq API", FAIL, f"{url}/readyz answered HTTP {status}: is --api the llmq API?",
                     "point --api / LLMQ_API_URL at the llmq API")


def report(ctx: Context, checks: list[Check], as_json: bool) -> None:
    failures = sum(check.status == FAIL for check in checks)
    warnings = sum(check.status == WARN for check in checks)
    if as_json:
        ctx.out.json({"ok": failures == 0, "checks": [asdict(check) for check in checks]})
        return
    width = max(len(check.name) for check in checks)
    for check in checks:
        ctx.out.line(f"{check.status:<5} {check.name:<{width}}  {check.detail}")
        if check.fix and check.status != OK:
            ctx.out.line(f"      {'':<{width}}  fix: {check.fix}")
    verdict = "all good" if not failures and not warnings else f"{failures} failure(s), {warnings} warning(s)"
    ctx.out.line(f"doctor: {verdict}")


def run(ctx: Context, args: argparse.Namespace) -> int:
    checks = Doctor(ctx, args, os.environ).run()
    report(ctx, checks, args.json)
    return ExitCode.FAILED if any(check.status == FAIL for check in checks) else ExitCode.OK
