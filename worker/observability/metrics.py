"""Prometheus metrics: every name operators, dashboards and alert rules rely on.

Labels never carry a job id or a key: model, status, queue, reason, and the appID half
of the key (a platform application id, not a secret) for token usage. Every label value
comes from a bounded set: status, queue, reason, outcome and limit are llmq's own words
(a reason or status code is at most three digits); a model or an app id is the caller's
choice, so it is shown only when the operator listed it (`LabelValues`) and is `other`
otherwise. A series costs the worker memory and every scrape bytes for as long as it runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram

OTHER = "other"


def parse_names(spec: str | None) -> frozenset[str]:
    """`"gpt-4o, deepseek-v3"` → the names; blanks are dropped."""
    return frozenset(item.strip() for item in (spec or "").split(",") if item.strip())


@dataclass(frozen=True)
class LabelValues:
    """The models and app ids that get series of their own; any other is counted as `other`."""

    models: frozenset[str] = frozenset()
    app_ids: frozenset[str] = frozenset()

    @classmethod
    def of(cls, models: Iterable[str], app_ids: Iterable[str]) -> LabelValues:
        return cls(frozenset(models), frozenset(app_ids))

    def model(self, name: str) -> str:
        return name if name in self.models else OTHER

    def app_id(self, app_id: str) -> str:
        return app_id if app_id in self.app_ids else OTHER


JOBS_SUBMITTED = Counter("llmq_jobs_submitted", "Jobs accepted by the API.", ["priority", "environment"])
JOBS_FINISHED = Counter("llmq_jobs_finished", "Jobs that reached a terminal state.", ["status"])
QUEUE_DEPTH = Gauge("llmq_queue_depth", "Messages waiting in each broker queue.", ["queue"])
UNFINISHED_JOBS = Gauge("llmq_unfinished_jobs", "Jobs queued, running or retrying.")
INFLIGHT_CALLS = Gauge("llmq_inflight_calls", "Proxy calls in progress in this worker process.")
UPSTREAM_LATENCY = Histogram(
    "llmq_upstream_request_duration_seconds",
    "Duration of proxy calls, by model and outcome.",
    ["model", "status_code"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300),
)
STREAM_DELTAS = Counter(
    "llmq_stream_deltas", "Content deltas of streaming calls published to live listeners, by model.", ["model"]
)
RETRIES = Counter("llmq_retries", "Attempts that will be retried, by reason.", ["reason"])
WEBHOOK_DELIVERIES = Counter("llmq_webhook_deliveries", "Webhook delivery attempts, by outcome.", ["outcome"])
TOKENS = Counter(
    "llmq_tokens", "Tokens reported by the proxy's usage, by model and app id.", ["model", "app_id", "kind"]
)
FLOW_CONTROL_WAITS = Counter(
    "llmq_flow_control_waits",
    "Times a job was held back before its call by a shared limit (concurrency, rpm, cooldown) of a model or app.",
    ["limit", "scope"],
)
