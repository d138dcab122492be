"""The printed tables, the machine they were measured on, and the JSON copy."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

PACKAGES = ("celery", "kombu", "redis", "httpx2", "aiohttp", "uvicorn", "fastapi", "uvloop", "httpx")
TARGETS = {"a_over_b": 0.9, "a_over_c": 50.0, "single_vs_healthz": 0.5, "batch_jobs_per_s": 10_000.0,
           "idle_p99_ms": 20.0, "rss_per_1000_mb": 50.0}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def _redis_server_version() -> str:
    from llmq.devstack.redis_server import redis_binary

    try:
        out = subprocess.run([redis_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return next((word.removeprefix("v=") for word in out.split() if word.startswith("v=")), out.strip())


def machine() -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "redis_server": _redis_server_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


@dataclass(frozen=True)
class Row:
    metric: str
    value: str
    target: str = ""
    passed: bool | None = None


def _print_table(title: str, rows: list[Row]) -> None:
    width = max(len(r.metric) for r in rows) + 2
    vwidth = max(len(r.value) for r in rows) + 2
    print(f"\n{title}")
    print(f"  {'metric':<{width}}{'value':<{vwidth}}{'target':<12}pass?")
    for r in rows:
        mark = "" if r.passed is None else ("yes" if r.passed else "NO")
        print(f"  {r.metric:<{width}}{r.value:<{vwidth}}{r.target:<12}{mark}")


def latency_rows(result: dict[str, Any]) -> list[Row]:
    a, b, c, t, p = result["a"], result["b"], result["c"], result["a_threads"], result["a_per_core"]
    a_b = a["jobs_per_s"] / b["jobs_per_s"]
    a_c = a["jobs_per_s"] / c["jobs_per_s"]
    clients = " / ".join(f"{name} {v['rate']:.0f}" for name, v in b["clients"].items())
    top = ", ".join(f"{name} {per:.1f}" for name, per in a["redis_top_commands"][:5])
    return [
        Row("(a) llmq jobs/s", f"{a['jobs_per_s']:.1f}"),
        Row("(b) ceiling jobs/s, direct client", f"{b['jobs_per_s']:.1f} ({b['best_client']})"),
        Row("    clients compared", clients),
        Row("    theoretical C / L", f"{b['theoretical_jobs_per_s']:.0f}"),
        Row(f"(c) typical Celery jobs/s ({c['jobs']} jobs)", f"{c['jobs_per_s']:.2f} (prefork x{c['concurrency']})"),
        Row("a/b", f"{a_b:.3f}", f">= {TARGETS['a_over_b']}", a_b >= TARGETS["a_over_b"]),
        Row("a/c", f"{a_c:.1f}", f">= {TARGETS['a_over_c']:.0f}", a_c >= TARGETS["a_over_c"]),
        Row("(a') llmq on Celery's thread pool: jobs/s", f"{t['jobs_per_s']:.1f}"),
        Row("(a') RSS per 1,000 in flight; CPU per 1,000 jobs",
            f"{t['rss_per_1000_in_flight_mb']:.1f} MB; {t['worker_cpu_s_per_1000_jobs']:.2f} s"),
        Row("a/a' (asyncio pool over thread pool)", f"{a['jobs_per_s'] / t['jobs_per_s']:.2f}"),
        Row(f"(a2) one worker per core ({p['processes']} x {p['slots_per_process']}): jobs/s",
            f"{p['jobs_per_s']:.1f}; a2/b {p['jobs_per_s'] / b['jobs_per_s']:.3f}; "
            f"a2/c {p['jobs_per_s'] / c['jobs_per_s']:.1f}"),
        Row("(a2) RSS per 1,000 in flight; CPU per 1,000 jobs",
            f"{p['rss_per_1000_in_flight_mb']:.1f} MB; {p['worker_cpu_s_per_1000_jobs']:.2f} s"),
        Row("(a) queue delay p50 / p99", f"{a['queue_delay_p50_ms']:.1f} / {a['queue_delay_p99_ms']:.1f} ms"),
        Row("(a) call time p50 / p99 (mock answers in L)", f"{a['call_ms_p50']:.0f} / {a['call_ms_p99']:.0f} ms"),
        Row("(a) call end to job finished p50 / p99",
            f"{a['after_call_ms_p50']:.1f} / {a['after_call_ms_p99']:.1f} ms"),
        Row("(a) calls in flight: mean / peak / at RSS sample",
            f"{a['in_flight_mean']:.0f} / {a['in_flight_peak']} / {a['in_flight_at_full_load_sample']}"),
        Row("(a) worker RSS idle / full load / peak",
            f"{a['worker_idle_rss_mb']:.1f} / {a['worker_full_load_rss_mb']:.1f} / {a['worker_peak_rss_mb']:.1f} MB"),
        Row("(a) worker RSS per 1,000 in-flight calls", f"{a['rss_per_1000_in_flight_mb']:.1f} MB"),
        Row("(a) worker CPU per 1,000 jobs", f"{a['worker_cpu_s_per_1000_jobs']:.2f} s"
                                             f" ({a['worker_cpu_util'] * 100:.0f}% of a core)"),
        Row("(a) Redis commands per job (incl. in Lua)", f"{a['redis_commands_per_job']:.1f}"
                                                         f" ({a['redis_usec_per_job']:.0f} us of Redis CPU)"),
        Row("    top commands per job", top),
    ]


def common_rows(d: dict[str, Any], e: dict[str, Any]) -> list[Row]:
    ratio = d["single_vs_healthz"]
    batch = d["batch"]["per_s"]
    ratio_rounds = " / ".join(f"{r['single_vs_healthz']:.3f}" for r in d["rounds"])
    batch_rounds = " / ".join(f"{r['batch']['per_s']:.0f}" for r in d["rounds"])

    idle_p99 = e["queue_delay_p99_ms"]
    load = max(d["healthz"]["client_cpu_util"], d["single_post"]["client_cpu_util"], d["batch"]["client_cpu_util"])
    return [
        Row("(d) GET /healthz req/s", f"{d['healthz']['per_s']:.0f} (API CPU {d['healthz']['server_cpu_util']:.0%})"),
        Row("(d) POST /v1/jobs jobs/s", f"{d['single_post']['per_s']:.0f}"
                                        f" (API CPU {d['single_post']['server_cpu_util']:.0%},"
                                        f" p99 {d['single_post']['p99_ms']:.0f} ms)"),
        Row("(d) POST /v1/jobs / GET /healthz", f"{ratio:.3f} (median; rounds {ratio_rounds})",
            f">= {TARGETS['single_vs_healthz']}",
            ratio >= TARGETS["single_vs_healthz"]),
        Row("(d) POST /v1/jobs/batch jobs/s", f"{batch:.0f} (median; rounds {batch_rounds})",
            f">= {TARGETS['batch_jobs_per_s']:.0f}", batch >= TARGETS["batch_jobs_per_s"]),
        Row("(d) load generator CPU (worst)", f"{load:.0%} of a core"),
        Row(f"(e) idle queue delay p50 / p99 ({e['jobs']} jobs)",
            f"{e['queue_delay_p50_ms']:.1f} / {idle_p99:.1f} ms", f"p99 <= {TARGETS['idle_p99_ms']:.0f}",
            idle_p99 <= TARGETS["idle_p99_ms"]),
    ]


def _memory_figures(r: dict[str, Any]) -> str:
    return (f"{r['rss_per_1000_in_flight_mb']:.1f} MB ({r['worker_idle_rss_mb']:.1f} MB idle, "
            f"{r['worker_full_load_rss_mb']:.1f} MB with {r['in_flight_at_full_load_sample']} in flight)")


def memory_rows(f: dict[str, Any]) -> list[Row]:
    per_1000 = f["asyncio"]["rss_per_1000_in_flight_mb"]
    return [
        Row("(f) worker RSS per 1,000 in-flight calls, asyncio pool (default)", _memory_figures(f["asyncio"]),
            f"<= {TARGETS['rss_per_1000_mb']:.0f}", per_1000 <= TARGETS["rss_per_1000_mb"]),
        Row("(f) the same on Celery's thread pool", _memory_figures(f["threads"])),
    ]


def print_machine(info: dict[str, Any]) -> None:
    packages = ", ".join(f"{k} {v}" for k, v in info["packages"].items())
    print(f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs ({info['physical_cores']} cores),"
          f" {info['ram_gb']} GB RAM, load {info['load_avg_at_start']}")
    print(f"         Python {info['python']}, redis-server {info['redis_server']}, {info['os']}")
    print(f"         {packages}")


def print_latency(latency_ms: int, config: dict[str, Any], result: dict[str, Any]) -> None:
    _print_table(f"latency {latency_ms} ms, N={config['jobs']}, C={config['concurrency']}", latency_rows(result))


def print_common(d: dict[str, Any], e: dict[str, Any]) -> None:
    _print_table(f"submission (one API process, {d['connections']} connections) and idle worker", common_rows(d, e))


def print_memory(f: dict[str, Any]) -> None:
    _print_table(f"worker memory ({f['calls']} calls in flight at once, mock at {f['latency_ms']} ms)",
                 memory_rows(f))


def print_breakdown(breakdown: dict[str, Any]) -> None:
    trips = ", ".join(f"{k} {v:.1f}" for k, v in breakdown["round_trips_per_job"].items())
    inner = ", ".join(f"{k} {v:.1f}" for k, v in breakdown["in_script_commands_per_job"].items())
    print(f"\nRedis commands per job by component ({breakdown['jobs']} jobs under MONITOR, not timed)")
    print(f"  round trips: {trips}; inside Lua scripts: {inner}")
    for row in breakdown["rows"]:
        if row["per_job"] >= 0.05:
            print(f"  {row['component']:<8}{row['command']:<34}{row['per_job']:.2f}")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
