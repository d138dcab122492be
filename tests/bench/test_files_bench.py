"""The file store benchmark runs end to end on a small file (its figures are for docs/batch.md, not asserted)."""

from __future__ import annotations

from llmq.bench.files import run


def test_the_benchmark_measures_both_backends() -> None:
    results = run(300)
    assert results["lines"] == 300
    for backend in ("directory", "s3"):
        assert results[backend]["requests"] == 300
        assert results[backend]["upload_s"] > 0 and results[backend]["read_lines_s"] > 0
