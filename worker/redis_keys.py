"""Every Redis key llmq writes, in one place."""

from __future__ import annotations

import hashlib
import re

PREFIX = "llmq"

QUEUE_BY_PRIORITY = {"high": "llmq.high", "normal": "llmq.normal", "low": "llmq.low"}
WEBHOOK_QUEUE = "llmq.webhooks"
BATCH_QUEUE = "llmq.batches"
"""Steps of OpenAI batches (feed, collect, finalize): short, and each bounded by the feeder's window."""
# Workers consume queues in this order. Deliveries and batch steps are short and bounded, so they go
# first; then a high job waiting always goes before a normal one, and normal before low.
QUEUES_IN_ORDER = (WEBHOOK_QUEUE, BATCH_QUEUE, *QUEUE_BY_PRIORITY.values())

# The index of unfinished jobs is partitioned by app id (`llmq.worker.jobs.unfinished`): each partition is one app
# id's quota set (`app_unfinished`, `UNKNOWN_APPS_UNFINISHED`), and the sweeper walks the partitions in use.
UNFINISHED_PARTITIONS = f"{PREFIX}:jobs:partitions"
"""Sorted set of the partitions of the index of unfinished jobs that may hold jobs, scored by when one was last
marked in use (a submission or a feed found it empty): what the sweeper walks. Never holds a job id."""

UNFINISHED_SWEEP_CURSOR = f"{PREFIX}:jobs:partitions:cursor"
"""Where the sweeper's walk of the partitions resumes (a `ZSCAN` cursor): each sweep visits a bounded number."""

LEGACY_ACTIVE_JOBS = f"{PREFIX}:jobs:active"
"""The index of unfinished jobs as one sorted set, written by versions before the partitioned index: the sweeper
moves what it finds there into the partitions (README, Upgrading)."""

DEADLINES = f"{PREFIX}:jobs:deadlines"
"""Sorted set of unfinished jobs that have a deadline, scored by it: what the deadline check reads."""

CANCELS_CHANNEL = f"{PREFIX}:cancels"
"""Pub/sub channel on which cancelling a running job names it; each worker process listens once."""

SWEEPER_LOCK = f"{PREFIX}:sweeper:lock"
"""Held by the one worker sweeping for stuck jobs at a time."""

DEADLINES_LOCK = f"{PREFIX}:deadlines:lock"
"""Held by the one worker ending jobs past their deadline at a time."""

LEASES_LOCK = f"{PREFIX}:leases:lock"
"""Held by the one worker taking back calls whose lease lapsed at a time."""
READY_PROBE = f"{PREFIX}:readyz:probe"
"""Written by /readyz: a full Redis refuses the write."""


def job(job_id: str) -> str:
    """Hash holding one job's record."""
    return f"{PREFIX}:job:{job_id}"


EVENTS_MAXLEN = 20_000
"""Entries kept per job's event stream: room for the longest streamed answers we expect."""


def job_events(job_id: str) -> str:
    """Stream of one job's state changes and content deltas (live progress, long-polling)."""
    return f"{PREFIX}:job:{job_id}:events"


def idempotency(owner: str, idempotency_key: str) -> str:
    """The job created first for one caller's Idempotency-Key (hashed: the header is caller data)."""
    digest = hashlib.sha256(idempotency_key.encode()).hexdigest()[:32]
    return f"{PREFIX}:idem:{owner}:{digest}"


_PLAIN_NAME = re.compile(r"[A-Za-z0-9._:/@+-]{1,100}")


def name_part(name: str) -> str:
    """Caller data (a model name, an app id) as part of a key: kept readable when it is plain, hashed otherwise."""
    return name if _PLAIN_NAME.fullmatch(name) else "#" + hashlib.sha256(name.encode()).hexdigest()[:32]


def flow(kind: str, scope: str, name: str) -> str:
    """Flow-control state shared by all workers: `kind` concurrency | rpm | cooldown, `scope` model | app."""
    return f"{PREFIX}:flow:{kind}:{scope}:{name_part(name)}"


KNOWN_APPS = f"{PREFIX}:apps:known"
"""Set of app ids (as `name_part` writes them) whose key the proxy has accepted at least once."""

UNKNOWN_APPS_UNFINISHED = f"{PREFIX}:quota:unknown"
"""The partition of the index of unfinished jobs shared by app ids not known yet: their shared quota (`ZCARD`).
Scored as every partition is (`llmq.worker.jobs.unfinished`): by submission, then by when to look again."""


def app_unfinished(app_id: str) -> str:
    """One known app id's partition of the index of unfinished jobs, batch lines included: its quota (`ZCARD`)."""
    return f"{PREFIX}:quota:app:{name_part(app_id)}"


FAIR_APPS = f"{PREFIX}:fair:apps"
"""Sorted set of the app ids with jobs in their ready lists, scored by calls started / weight: whose turn is next."""

FAIR_DOORBELL = f"{PREFIX}:fair:doorbell"
"""List a worker waiting for messages also waits on: the submit script pushes to it when an app id's ready lists
fill from empty, so an idle worker wakes to take its turn."""

FAIR_READY_PREFIX = f"{PREFIX}:fair:ready:"


def fair_ready(app_part: str, queue: str) -> str:
    """One app id's ready list for one priority (named by the broker queue its messages are delivered from)."""
    return f"{FAIR_READY_PREFIX}{app_part}:{queue}"


def owner_jobs(owner: str) -> str:
    """Sorted set of one owner's jobs (finished or not), scored by submission time: what `GET /v1/jobs` lists.

    Named by the owner id (a fingerprint of the key, never the key); trimmed of entries older than a record's TTL."""
    return f"{PREFIX}:owner:{owner}:jobs"


def rejected_key(fingerprint: str) -> str:
    """Present (with a TTL) while a key the proxy answered 401/403 is refused; named by the key's fingerprint."""
    return f"{PREFIX}:key:rejected:{fingerprint}"


# The OpenAI Files and Batch API (docs/batch.md). Ids are made by llmq (`file-…`, `batch_…`), never caller data.
def file(file_id: str) -> str:
    """Hash holding one file's record (the bytes are in the file store)."""
    return f"{PREFIX}:file:{file_id}"


def files_of(owner: str) -> str:
    """Sorted set of one owner's file ids, scored by creation time: listing and pagination."""
    return f"{PREFIX}:files:{owner}"


def batch(batch_id: str) -> str:
    """Hash holding one batch's record: status, counts, timestamps, the feeder's position."""
    return f"{PREFIX}:batch:{batch_id}"


def batches_of(owner: str) -> str:
    """Sorted set of one owner's batch ids, scored by creation time."""
    return f"{PREFIX}:batches:{owner}"


def batch_inflight(batch_id: str) -> str:
    """Hash of a batch's lines in flight: job id -> line number. Its size is the feeder's window at most."""
    return f"{PREFIX}:batch:{batch_id}:inflight"


def batch_lock(batch_id: str) -> str:
    """Held by the one worker stepping a batch at a time."""
    return f"{PREFIX}:batch:{batch_id}:lock"


ACTIVE_BATCHES = f"{PREFIX}:batches:active"
"""Sorted set of unfinished batch ids, scored by their last step: the sweeper resumes stalled ones."""


def breaker(environment: str) -> str:
    """The circuit breaker shared by every worker for one proxy environment (worker.proxy.circuit_breaker)."""
    return f"{PREFIX}:breaker:{environment}"
