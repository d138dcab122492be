"""`python -m llmq.bench.instructions`: the worker's and the API's work in instructions, this tree against a baseline.

On a shared or virtual machine the speed of the same code drifts by a third within the hour, which hides
changes of a few per cent in seconds and jobs/s. Valgrind's callgrind counts the instructions a process
executes, whatever else the machine is doing: the same code gives the same count within about 2 %. This runs
the worker and the API of two source trees under callgrind, counting only while the measured load runs, against
a private Redis and the mock proxy, and prints per tree:

- the worker's instructions per job (N jobs through the real API at L ms, C slots);
- the API's instructions per `GET /healthz` and per `POST /v1/jobs`, and their ratio;

for the baseline (a git ref, exported into a temporary directory) and for this tree, with this / baseline.
The counts leave out the kernel (system calls) and waiting, so they measure the Python-level work, not the
rates `python -m llmq.bench` reports. The baseline runs with this tree's virtualenv.

Either tree may have either layout: the one before `llmq.…` (top-level `api`, `worker`: run with the tree on
PYTHONPATH) or the packaged one (`llmq.api` from `api/` by pyproject's package-dir: run from a directory of
`llmq/<name>` links to the tree's folders, ahead of the virtualenv's editable install). Before counting, a
probe process says which file it imports the worker from; a tree that would not be the one measured stops it.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.bench import loadgen
from llmq.bench.end_to_end import Drain, api_client, submit_batches, warm_up
from llmq.bench.jobs import job_body
from llmq.bench.stack import RESULTS_DIR, ROOT, BenchStack
from llmq.bench.submission import HEADERS
from llmq.devstack.processes import ManagedProcess, api_process, worker_process
from llmq.devstack.redis_server import free_port

START_TIMEOUT_S = 300  # a Python process starts about ten times slower under valgrind
LOAD_CONNECTIONS = 16


@dataclass(frozen=True)
class Tree:
    """A source tree to measure, and how its processes import it."""

    source: Path
    import_root: Path  # on PYTHONPATH, and the working directory (Celery puts that first on sys.path)
    packaged: bool  # imports as `llmq.…`; else as top-level `api`, `worker`, ...

    @property
    def name(self) -> str:
        return self.source.name

    def command(self, args: list[str]) -> list[str]:
        """The dev stack's command line (written for `llmq.…`) for this tree's layout."""
        return args if self.packaged else [arg.removeprefix("llmq.") for arg in args]

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": str(self.import_root)}

    def check_imports(self, env: dict[str, str]) -> None:
        """Stop unless a process started as the measured ones imports the worker from `source`."""
        module = "llmq.worker.job_runner" if self.packaged else "worker.job_runner"
        probe = subprocess.run([sys.executable, "-c", f"import {module} as m; print(m.__file__)"],
                               env=self.env(env), cwd=self.import_root, capture_output=True, text=True)
        imported = Path(probe.stdout.strip()).resolve() if probe.returncode == 0 else None
        if imported is None or not imported.is_relative_to(self.source.resolve()):
            raise RuntimeError(f"{module} for {self.source} comes from {imported or probe.stderr.strip()[-300:]}, "
                               "not from the tree to measure")


def import_tree(source: Path, scratch: Path) -> Tree:
    """How to run `source`: as it is (the layout before `llmq.…`), or through `llmq/<name>` links to its folders."""
    pyproject = tomllib.loads((source / "pyproject.toml").read_text())
    package_dir: dict[str, str] = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    mapped = {name.removeprefix("llmq."): folder for name, folder in package_dir.items() if name.startswith("llmq.")}
    if not mapped:
        return Tree(source, source, packaged=False)
    root = scratch / f"import-{source.name}"
    (root / "llmq").mkdir(parents=True)
    # A regular package here, found on PYTHONPATH before the editable install's finder is asked.
    (root / "llmq" / "__init__.py").write_text("")
    for name, folder in mapped.items():
        (root / "llmq" / name).symlink_to((source / folder).resolve(), target_is_directory=True)
    return Tree(source, root, packaged=True)


def export(ref: str, into: Path) -> Path:
    """The files of `ref` in `into`, without a worktree (nothing is added to the repository's metadata)."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref], cwd=ROOT, check=True, capture_output=True)
    into.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


class Counted:
    """A process as the dev stack starts it, run from `tree` under callgrind, counting only during `count`."""

    def __init__(self, process: ManagedProcess, tree: Tree) -> None:
        self.out = Path(tempfile.mkdtemp(prefix="llmq-callgrind-")) / "callgrind.out"
        args = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}",
                *tree.command(process.args)]
        tree.check_imports(process.env)
        self.process = ManagedProcess(process.name, args, tree.env(process.env), process.log_path,
                                      cwd=tree.import_root)
        self._dumps = 0

    def _control(self, *args: str) -> None:
        subprocess.run(["callgrind_control", *args, str(self.process.pid)], check=True, capture_output=True)

    def count(self, load: Callable[[], None]) -> int:
        self._control("-i", "on")
        try:
            load()
        finally:
            self._control("-i", "off")
        self._control("-d")
        self._dumps += 1
        dump = Path(f"{self.out}.{self._dumps}")
        for _ in range(50):  # callgrind_control returns once the dump is requested, not written
            if dump.exists() and "\ntotals:" in dump.read_text(errors="replace"):
                break
            time.sleep(0.1)
        totals = [line for line in dump.read_text(errors="replace").splitlines() if line.startswith("totals:")]
        return int(totals[-1].split()[1])

    def cleanup(self) -> None:
        self.process.stop(timeout_s=60)  # before its directory goes: callgrind writes a last dump on exit
        shutil.rmtree(self.out.parent, ignore_errors=True)


def _load(url: str, method: str, body: str | None, n: int, ok: int) -> None:
    result = loadgen.run({"client": "aiohttp", "method": method, "url": url, "headers": HEADERS, "body": body,
                          "n": n, "concurrency": LOAD_CONNECTIONS, "ok_status": [ok]}, timeout_s=1800)
    if result["ok"] != n:
        raise RuntimeError(f"{method} {url}: {n - result['ok']} of {n} failed: {result['statuses']}")


def count_worker(tree: Tree, jobs: int, latency_ms: int, concurrency: int) -> float:
    with BenchStack(f"instructions-worker-{tree.name}", concurrency) as stack:
        stack.start_mock(latency_ms)
        stack.start_api()
        worker = Counted(worker_process(stack.env(), stack.log_dir / "worker.log", "counted"), tree)
        try:
            stack.add(worker.process)
            stack.workers.append(worker.process)
            worker.process.wait_for_log("ready.", timeout_s=START_TIMEOUT_S)
            warm_up(stack, 20)

            def run_jobs() -> None:
                with api_client(stack) as client:
                    submit_batches(client, 0, jobs)
                Drain(stack).wait(1800)

            return worker.count(run_jobs) / jobs
        finally:
            worker.cleanup()


def count_api(tree: Tree, requests: int) -> dict[str, float]:
    body = json.dumps(job_body(0))
    with BenchStack(f"instructions-api-{tree.name}") as stack:
        port = free_port()
        api = Counted(api_process(stack.env(), port, stack.log_dir / "api.log"), tree)
        url = f"http://127.0.0.1:{port}"
        try:
            stack.add(api.process)
            api.process.wait_for_http(f"{url}/healthz", timeout_s=START_TIMEOUT_S)
            _load(f"{url}/v1/jobs", "POST", body, 200, 202)  # warm-up: pools, code paths
            _load(f"{url}/healthz", "GET", None, 200, 200)
            healthz = api.count(lambda: _load(f"{url}/healthz", "GET", None, requests, 200)) / requests
            post = api.count(lambda: _load(f"{url}/v1/jobs", "POST", body, requests, 202)) / requests
            return {"healthz": healthz, "post": post, "healthz_over_post": healthz / post}
        finally:
            api.cleanup()


def measure(tree: Tree, args: argparse.Namespace) -> dict[str, Any]:
    print(f"bench.instructions: {tree.source}: worker, {args.jobs} jobs", file=sys.stderr, flush=True)
    worker = count_worker(tree, args.jobs, args.latency_ms, args.concurrency)
    print(f"bench.instructions: {tree.source}: API, {args.requests} requests each", file=sys.stderr, flush=True)
    return {"worker_per_job": worker, **count_api(tree, args.requests)}


def print_table(baseline_ref: str, baseline: dict[str, Any], current: dict[str, Any], args: argparse.Namespace) -> None:
    rows = [
        (f"worker, per job ({args.jobs} jobs at {args.latency_ms} ms, {args.concurrency} slots)", "worker_per_job"),
        ("API, per GET /healthz", "healthz"),
        ("API, per POST /v1/jobs", "post"),
    ]
    print(f"\nInstructions (callgrind), baseline {baseline_ref} against this tree\n")
    print(f"| {'':<58} | {'baseline':>10} | {'this tree':>10} | {'this / baseline':>15} |")
    print(f"|{'-' * 60}|{'-' * 12}|{'-' * 12}|{'-' * 17}|")
    for label, key in rows:
        b, c = baseline[key], current[key]
        print(f"| {label:<58} | {b / 1000:>9,.0f}k | {c / 1000:>9,.0f}k | {c / b:>15.3f} |")
    print(f"| {'GET /healthz / POST /v1/jobs (instructions)':<58} | {baseline['healthz_over_post']:>10.3f} | "
          f"{current['healthz_over_post']:>10.3f} | {'':>15} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m llmq.bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="git ref to compare this tree with (default HEAD)")
    parser.add_argument("--jobs", type=int, default=400, help="jobs for the worker's count (default 400)")
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint for the API's count")
    parser.add_argument("--latency-ms", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("bench.instructions needs valgrind (Debian/Ubuntu: apt-get install valgrind)", file=sys.stderr)
        return 2
    commit = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="llmq-baseline-"))
    try:
        baseline = measure(import_tree(export(commit, scratch / commit), scratch), args)
        current = measure(import_tree(ROOT, scratch), args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print_table(f"{args.baseline} ({commit})", baseline, current, args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "instructions.json").write_text(json.dumps(
        {"baseline": {"ref": args.baseline, "commit": commit, **baseline}, "this_tree": current,
         "config": {k: v for k, v in vars(args).items() if k != "baseline"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
