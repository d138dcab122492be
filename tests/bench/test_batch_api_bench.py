"""The Batch API benchmark runs end to end on a small file (its figures are for docs/batch.md, not asserted)."""

from __future__ import annotations

from llmq.bench.batch_api import run


def test_the_benchmark_runs_a_whole_batch() -> None:
    results = run(lines=30, latency_ms=10, slots=20, window=10)
    assert (results["completed"], results["failed"]) == (30, 0)
    assert results["batch_s"] > 0 and results["ratio"] > 0 and results["output_mb"] > 0
