"""`llmq-dev`: the whole service on one machine, with nothing to set up.

Starts a private Redis when none is configured and the mock proxy when no proxy URL is
configured, then the API, a worker and Flower. Prints the URLs and a ready-to-paste
curl, and stops everything on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from dotenv import dotenv_values

from llmq.devstack.processes import ManagedProcess, api_process, flower_process, mock_process, worker_process
from llmq.devstack.redis_server import RedisServer, free_port
from llmq.mockproxy import require_aiohttp
from llmq.worker.settings import ConfigError, load_settings

DEMO_KEY = "1234:demo-app-key"


def port_or_free(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()


def configured(name: str, dotenv: dict[str, str | None]) -> bool:
    return bool(os.environ.get(name) or dotenv.get(name))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmq-dev", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--api-port", type=int, default=8000)
    parser.add_argument("--flower-port", type=int, default=5555)
    parser.add_argument("--mock-port", type=int, default=8090)
    parser.add_argument("--data-dir", type=Path, default=Path(".llmq"), help="Redis data and logs (default .llmq)")
    args = parser.parse_args(argv)

    dotenv = dotenv_values(".env") if Path(".env").exists() else {}
    env = {**os.environ}
    env.setdefault("LLMQ_LOG_FORMAT", "text")
    if not configured("LLMQ_SECRET", dotenv):
        env["LLMQ_DEV_MODE"] = "1"
    logs = args.data_dir / "logs"
    needs_mock = not (configured("LLMQ_UPSTREAM_TEST_URL", dotenv) or configured("LLMQ_UPSTREAM_PROD_URL", dotenv))
    if needs_mock:
        require_aiohttp("llmq-dev")
    processes: list[ManagedProcess] = []
    redis_server: RedisServer | None = None

    def stop_all(*_: object) -> None:
        for process in reversed(processes):
            process.stop()
        if redis_server is not None:
            redis_server.stop()

    try:
        if not configured("LLMQ_REDIS_URL", dotenv):
            redis_server = RedisServer(data_dir=(args.data_dir / "redis").resolve()).start()
            env["LLMQ_REDIS_URL"] = redis_server.url
        mock_url = None
        if needs_mock:
            mock_port = port_or_free(args.mock_port)
            mock = mock_process(env, mock_port, logs / "mock-proxy.log", "--latency-ms", "800").start()
            processes.append(mock)
            mock.wait_for_log("mock proxy listening")
            mock_url = f"http://127.0.0.1:{mock_port}/openai-compatible/v1"
            env["LLMQ_UPSTREAM_TEST_URL"] = env["LLMQ_UPSTREAM_PROD_URL"] = mock_url
            # The demo's callbacks go to this machine: open loopback for them.
            env.setdefault("LLMQ_CALLBACK_ALLOW", "localhost,127.0.0.0/8,::1")

        os.environ.update(env)
        settings = load_settings()  # stop here, in one line, on a bad setting

        api_port = port_or_free(args.api_port)
        api = api_process(env, api_port, logs / "api.log").start()
        processes.append(api)
        worker = worker_process(env, logs / "worker.log", "worker").start()
        processes.append(worker)
        flower_port = port_or_free(args.flower_port)
        flower_env = {**env}
        if settings.flower_basic_auth is not None:
            flower_env["FLOWER_BASIC_AUTH"] = settings.flower_basic_auth.get_secret_value()
        else:
            # Local demo on loopback only: Flower's JSON API answers without a login.
            flower_env["FLOWER_UNAUTHENTICATED_API"] = "true"
        flower = flower_process(flower_env, flower_port, logs / "flower.log").start()
        processes.append(flower)
        api.wait_for_http(f"http://127.0.0.1:{api_port}/readyz")
        worker.wait_for_log("ready.", timeout_s=60)
        flower.wait_for_http(f"http://127.0.0.1:{flower_port}/healthcheck")
    except ConfigError as err:
        stop_all()
        print(err, file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as err:
        stop_all()
        print(f"llmq-dev: {err}", file=sys.stderr)
        return 1

    key_hint = DEMO_KEY if mock_url else "$TAL_MLOPS_APP_ID:$TAL_MLOPS_APP_KEY"
    api_url = f"http://127.0.0.1:{api_port}"
    redis_note = f"  (started for you, data in {args.data_dir / 'redis'})" if redis_server else ""
    print(f"""
llmq is running.
  API      {api_url}        (docs: {api_url}/docs)
  Flower   http://127.0.0.1:{flower_port}
  Redis    {env['LLMQ_REDIS_URL']}{redis_note}
  Proxy    {settings.upstream_url(None)}{'  (the mock proxy: no real one configured)' if mock_url else ''}
  Logs     {logs}/

Submit a job:
  curl -s -X POST {api_url}/v1/jobs -H 'Authorization: Bearer {key_hint}' \\
    -H 'Content-Type: application/json' \\
    -d '{{"request": {{"model": "gemini-1.5-pro", "messages": [{{"role": "user", "content": "你是谁？"}}]}}}}'
Then read it (use the id from the answer; wait=30 answers as soon as it is done):
  curl -s '{api_url}/v1/jobs/JOB_ID?wait=30' -H 'Authorization: Bearer {key_hint}'

Ctrl-C stops everything.""", flush=True)

    stopping = False

    def on_signal(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    while not stopping:
        dead = [p.name for p in processes if not p.alive()]
        if dead:
            print(f"llmq-dev: {', '.join(dead)} stopped unexpectedly; see {logs}/", file=sys.stderr)
            break
        time.sleep(0.5)
    print("\nstopping…", flush=True)
    stop_all()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
