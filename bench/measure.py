"""Small measuring tools: percentiles, process CPU and memory, Redis command counts."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import psutil
import redis


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _tree(pids: int | Sequence[int]) -> list[psutil.Process]:
    found: list[psutil.Process] = []
    for pid in [pids] if isinstance(pids, int) else pids:
        root = psutil.Process(pid)
        found += [root, *root.children(recursive=True)]
    return found


def cpu_seconds(pids: int | Sequence[int]) -> float:
    """User + system CPU of processes and all their live and reaped children."""
    total = 0.0
    for proc in _tree(pids):
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def rss_bytes(pids: int | Sequence[int]) -> int:
    total = 0
    for proc in _tree(pids):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


class RssSampler:
    """Samples process trees' RSS on a thread until stopped; keeps the peak and when it happened."""

    def __init__(self, pids: int | Sequence[int], interval_s: float = 0.1) -> None:
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self.peak_at = 0.0
        self.samples: list[tuple[float, int]] = []  # (time.time(), bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = rss_bytes(self.pids)
            self.samples.append((time.time(), rss))
            if rss > self.peak:
                self.peak, self.peak_at = rss, time.time()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


@dataclass(frozen=True)
class CommandStats:
    calls: dict[str, int]
    usec: dict[str, int]

    @classmethod
    def read(cls, client: redis.Redis) -> CommandStats:
        info = client.info("commandstats")
        calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}
        usec = {name.removeprefix("cmdstat_"): int(v["usec"]) for name, v in info.items()}
        return cls(calls, usec)

    def minus(self, before: CommandStats) -> CommandStats:
        names = self.calls.keys() | before.calls.keys()
        calls = {n: self.calls.get(n, 0) - before.calls.get(n, 0) for n in names}
        usec = {n: self.usec.get(n, 0) - before.usec.get(n, 0) for n in names}
        return CommandStats({n: c for n, c in calls.items() if c}, {n: u for n, u in usec.items() if calls[n]})

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    @property
    def total_usec(self) -> int:
        return sum(self.usec.values())

    def top(self, count: int) -> list[tuple[str, int]]:
        return sorted(self.calls.items(), key=lambda item: -item[1])[:count]


def wait_for(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> None:
    """Poll `check()` until true; TimeoutError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")
