"""Which component sends which Redis commands per job: MONITOR during a small extra run, clients told apart
by their TCP port (mapped to the API and worker processes), script calls named after llmq's Lua scripts.

MONITOR slows Redis down, so this run is never one of the timed ones.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from typing import Any

import psutil
import redis

from llmq.bench.end_to_end import Drain, api_client, submit_batches
from llmq.bench.stack import BenchStack
from llmq.worker.jobs import scripts as job_scripts

SCRIPT_NAMES = {
    hashlib.sha1(text.encode()).hexdigest(): name
    for name, text in (("submit", job_scripts.SUBMIT), ("claim", job_scripts.CLAIM),
                       ("transition", job_scripts.TRANSITION), ("update_callback", job_scripts.UPDATE_CALLBACK))
}
LISTEN_TIMEOUT_S = 30.0  # a safety net only: a PING wakes the listener when it should stop
IN_SCRIPT = "  (in script) "


def _ports(pid: int) -> set[int]:
    found: set[int] = set()
    root = psutil.Process(pid)
    for proc in (root, *root.children(recursive=True)):
        try:
            found.update(conn.laddr.port for conn in proc.net_connections(kind="tcp") if conn.laddr)
        except psutil.NoSuchProcess:
            continue
    return found


class Monitor:
    """Records (client port, command) pairs from MONITOR on a thread; Lua's inner commands go to the caller."""

    def __init__(self, redis_url: str, waker: redis.Redis) -> None:
        self.waker = waker
        self.client = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=LISTEN_TIMEOUT_S)
        self.seen: Counter[tuple[str, str]] = Counter()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)

    def _run(self) -> None:
        caller = ""
        with self.client.monitor() as monitor:
            self._ready.set()
            while not self._stop.is_set():
                entry = monitor.next_command()
                words = entry["command"].split(" ", 2)
                name = words[0].upper()
                if entry["client_type"] == "lua":
                    self.seen[(caller, IN_SCRIPT + name)] += 1
                    continue
                caller = entry["client_port"]
                if name == "EVALSHA" and len(words) > 1:
                    name = f"EVALSHA {SCRIPT_NAMES.get(words[1], words[1][:8])}"
                self.seen[(caller, name)] += 1

    def __enter__(self) -> Monitor:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.waker.ping()
        self._thread.join(LISTEN_TIMEOUT_S + 5)
        self.client.close()


def run_breakdown(stack: BenchStack, n: int, timeout_s: float) -> dict[str, Any]:
    assert stack.api is not None and stack.worker is not None and stack.redis is not None
    owners: dict[str, str] = {}

    def learn_ports() -> None:
        for component, process in (("api", stack.api), ("worker", stack.worker)):
            assert process is not None
            owners.update({str(port): component for port in _ports(process.pid)})

    drain = Drain(stack)
    drain.wait(60)
    with Monitor(stack.redis_url, stack.redis) as monitor, api_client(stack) as client:
        learn_ports()
        submit_batches(client, 0, n)
        deadline = time.monotonic() + timeout_s
        while not drain.done():
            learn_ports()  # connections opened during the run are seen while they live
            if time.monotonic() > deadline:
                raise TimeoutError("breakdown run did not finish")
            time.sleep(0.2)
        learn_ports()
    round_trips: Counter[str] = Counter()
    in_scripts: Counter[str] = Counter()
    by_command: Counter[tuple[str, str]] = Counter()
    for (port, command), count in monitor.seen.items():
        component = owners.get(port, "other")
        if component == "other":
            continue  # the benchmark's own connections, and MONITOR itself
        (in_scripts if command.startswith(IN_SCRIPT) else round_trips)[component] += count
        by_command[(component, command)] += count
    rows = sorted(((c, cmd, count / n) for (c, cmd), count in by_command.items()), key=lambda r: (r[0], -r[2]))
    return {
        "jobs": n,
        "round_trips_per_job": {name: count / n for name, count in round_trips.items()},
        "in_script_commands_per_job": {name: count / n for name, count in in_scripts.items()},
        "rows": [{"component": c, "command": cmd, "per_job": round(v, 3)} for c, cmd, v in rows],
    }
