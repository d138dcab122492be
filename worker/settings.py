"""The one typed settings object, read from the environment and an optional `.env`.

Every process (API, worker, Flower, the local runner) reads the same variables, so a
misconfiguration is caught the same way everywhere: at start-up, in one line that names
the variable and what is wrong with it.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from llmq.worker.observability.metrics import LabelValues, parse_names
from llmq.worker.proxy.flow_control import FlowLimits, LimitTable
from llmq.worker.secrets.platform_key import check_composite_key
from llmq.worker.webhooks.callback import check_secret, parse_schedule
from llmq.worker.webhooks.callback_guard import AllowList

Environment = Literal["test", "prod"]
DEV_SECRET = "llmq-dev-secret-do-not-use-in-production"
PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "changethis", DEV_SECRET}
MIN_SECRET_CHARS = 16


class ConfigError(SystemExit):
    """Start-up stops here: one line naming the variable and the problem."""


def _check_http_url(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http(s) URL like http://HOST/openai-compatible/v1, got {value!r}")
    return value.rstrip("/")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LLMQ_", env_file=".env", extra="ignore", populate_by_name=True, env_ignore_empty=True
    )

    # Storage and broker.
    redis_url: str = "redis://127.0.0.1:6379/0"
    broker_url: str | None = Field(None, description="Celery broker; defaults to redis_url.")
    redis_socket_timeout_s: float = Field(3.0, gt=0, description="So a Redis outage answers 503, not a hang.")

    # The proxy, by named environment (base URLs end in /openai-compatible/v1).
    upstream_test_url: str | None = None
    upstream_prod_url: str | None = None
    upstream_default_env: Environment = "test"
    connect_timeout_s: float = Field(10.0, gt=0)
    read_timeout_s: float = Field(180.0, gt=0, description="Longest silence allowed while the proxy answers.")

    # The service's own platform key, as the proxy guide sets it: either the whole key in
    # TAL_MLOPS_APP_KEY, or the halves in TAL_MLOPS_APP_ID and TAL_MLOPS_APP_KEY.
    app_id: str | None = Field(None, validation_alias=AliasChoices("TAL_MLOPS_APP_ID", "LLMQ_APP_ID"))
    app_key: SecretStr | None = Field(None, validation_alias=AliasChoices("TAL_MLOPS_APP_KEY", "LLMQ_APP_KEY"))

    # Attempts and retry delays.
    default_max_attempts: int = Field(5, ge=1)
    max_attempts_limit: int = Field(10, ge=1)
    retry_base_delay_s: float = Field(1.0, ge=0)
    retry_max_delay_s: float = Field(60.0, ge=0)
    retry_after_cap_s: float = Field(120.0, ge=0, description="Longest Retry-After from the proxy honoured.")

    # Job records.
    result_ttl_s: int = Field(3 * 24 * 3600, ge=60)
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_head_bytes: int = Field(
        64 * 1024, ge=4096, description="A request whose target and headers are larger gets 431 (the API's HTTP "
                                        "server counts them as they arrive).",
    )
    max_messages: int = Field(4096, ge=1)
    max_metadata_bytes: int = Field(16 * 1024, ge=0)

    # Secrets. The server secret encrypts callers' keys at rest and scopes jobs to them.
    secret: SecretStr | None = None
    dev_mode: bool = False

    # Worker.
    worker_concurrency: int = Field(200, ge=1, description="Proxy calls held at once by one worker process.")
    worker_pool: Literal["asyncio", "threads"] = Field(
        "asyncio", description="Celery pool: asyncio waits for every call on one event loop; threads, one thread each."
    )
    visibility_timeout_s: int = Field(
        600, ge=5, description="Unacknowledged jobs of a lost worker are redelivered after this long."
    )

    stuck_after_s: int = Field(
        3600, ge=10, description="A queued job untouched this long is published again (its message may be lost)."
    )
    sweep_interval_s: float = Field(60, gt=0, description="How often one worker looks for stuck jobs.")
    redelivery_check_s: int = Field(10, ge=1, description="How often workers look for a lost worker's jobs.")

    # Flow control shared by all workers (off unless set): 'NAME=LIMIT,...', '*' for any other name.
    model_concurrency: str | None = Field(None, description="Proxy calls in flight at once per model.")
    app_concurrency: str | None = Field(None, description="Proxy calls in flight at once per app id.")
    model_rpm: str | None = Field(None, description="Proxy calls started per minute per model.")
    app_rpm: str | None = Field(None, description="Proxy calls started per minute per app id.")
    cooldown_on_429: bool = Field(False, description="After a 429, pause the model and the app for its Retry-After.")

    # Webhooks.
    webhook_secret: SecretStr | None = Field(
        None, description="Service-wide signing secret, 'whsec_<base64>', for jobs without their own."
    )
    webhook_schedule_s: str = Field(
        "0,5,300,1800,7200,18000,36000,36000", description="Delay before each delivery attempt, comma-separated."
    )
    webhook_timeout_s: float = Field(
        15.0, gt=0, description="One deadline for a whole delivery attempt: name lookup, connection, request, answer."
    )
    callback_allow: str | None = Field(
        None,
        description="Hosts and networks callbacks may reach despite being private, e.g. 'hooks.internal,10.2.0.0/16'.",
    )

    worker_metrics_port: int = Field(
        9808, ge=0, le=65535, description="Port of a worker's Prometheus endpoint (0: none)."
    )

    task_sent_events: bool = Field(
        False, description="Also publish a task-sent event per job from the API (workers' task events are always on)."
    )

    # Flower.
    flower_basic_auth: SecretStr | None = Field(None, description="user:password for Flower's basic auth.")

    # Logs.
    log_format: Literal["json", "text"] = "json"
    log_level: str = "INFO"

    # File store: the bytes of the OpenAI Files and Batch API (uploads, batch output), shared by every API
    # process and worker. A directory by default; an S3-compatible bucket when several hosts need it.
    files_dir: str = Field(".llmq/files", description="Directory of the file store when no bucket is set.")
    files_s3_url: str | None = Field(None, description="s3://BUCKET/PREFIX: keep files in this bucket instead.")
    files_s3_endpoint_url: str | None = Field(None, description="An S3-compatible server's URL (none: AWS).")
    files_s3_region: str | None = None
    files_s3_access_key_id: str | None = Field(None, description="None: the usual AWS credential chain.")
    files_s3_secret_access_key: SecretStr | None = None
    files_s3_part_bytes: int = Field(
        8 * 1024 * 1024, ge=5 * 1024 * 1024, description="Multipart upload part size: memory held per upload."
    )
    files_max_upload_bytes: int = Field(200 * 1024 * 1024, ge=1024, description="Larger uploads get 413.")
    files_abandoned_write_s: float = Field(
        24 * 3600, gt=0, description="A write unfinished this long was cut off with its process (an API killed "
        "mid-upload): the sweep removes what it left (a temporary file, an S3 multipart upload)."
    )
    # Secret rotation: earlier LLMQ_SECRET values still decrypt keys and recognise owners until their jobs are gone.
    secret_previous: SecretStr | None = Field(
        None, description="Earlier server secrets, comma-separated, newest first; LLMQ_SECRET encrypts new records."
    )
    # Deadlines, cancels and leases of calls in flight.
    deadline_check_s: float = Field(
        1.0, gt=0, description="How often one worker ends jobs still waiting at their deadline (`expired`)."
    )
    lease_check_s: float = Field(
        5.0, gt=0, description="How often one worker hands back, before the visibility timeout, calls whose lease "
                               "lapsed (their worker is gone). Redis broker only.",
    )
    # Metrics: label values from bounded sets, and where a worker serves them.
    metrics_models: str | None = Field(
        None, description="Models with series of their own, comma-separated (plus those named in flow control); "
                          "any other model is 'other'.",
    )
    metrics_app_ids: str | None = Field(
        None, description="App ids with series of their own, comma-separated; any other is 'other'."
    )
    worker_metrics_addr: str = Field(
        "127.0.0.1", description="Address a worker's Prometheus endpoint listens on; 0.0.0.0 to be scraped from "
                                 "other hosts (containers).",
    )

    # Webhook deliveries: slots of their own, beside the proxy calls' (LLMQ_WEBHOOK_TIMEOUT_S bounds each one whole).
    webhook_concurrency: int = Field(
        50, ge=1, description="Webhook deliveries one worker process makes at once, in slots of their own."
    )

    # Waiting requests (long-polls, event streams): one API process reads for all of them on one Redis connection.
    max_waiters: int = Field(
        2000, ge=1, description="Long-polls and event streams one API process serves at once."
    )
    waiter_queue_s: float = Field(
        2.0, ge=0, description="How long a request waits for a place among them before it is answered 503."
    )
    # Capacity: quotas per app id, keys the proxy rejected, and Redis's memory.
    app_max_unfinished: int = Field(
        100_000, ge=1, description="Unfinished jobs (batch lines included) one app id may have; above it, 429."
    )
    unknown_apps_max_unfinished: int = Field(
        1_000, ge=1,
        description="Unfinished jobs shared by every app id whose key the proxy has not yet accepted; above it, 429.",
    )
    rejected_key_block_s: int = Field(
        600, ge=0, description="How long a key the proxy answered 401/403 is refused at submission (401); 0: never."
    )
    redis_high_water: float = Field(
        0.9, gt=0, le=1, description="Fraction of Redis's maxmemory above which new jobs are refused (503)."
    )
    # The OpenAI-compatible route (POST /v1/chat/completions): how long a call waits for its job.
    openai_wait_s: float = Field(
        600, gt=0, description="Wait for a call that states no timeout (x-stainless-read-timeout, Prefer: wait)."
    )
    openai_max_wait_s: float = Field(3600, gt=0, description="Longest wait a call may ask for.")

    # OpenAI Batch API (docs/batch.md): how a batch's lines are fed to the queue and its steps driven.
    batch_window_lines: int = Field(
        1000, ge=1, le=50_000, description="Lines of one batch queued or running at once: its Redis footprint."
    )
    batch_step_interval_s: float = Field(1.0, gt=0, description="Pause between two steps of a running batch.")
    batch_stall_s: float = Field(
        60, gt=0, description="A batch not stepped for this long is resumed by the sweeper (its step was lost); "
        "the lock of a step whose worker died lapses after as long."
    )
    batch_completion_window_s: int = Field(
        24 * 3600, ge=1, description="Length of the '24h' completion window; unfinished lines then expire."
    )
    # Fair turns between app ids (docs/fairness.md): Redis broker only.
    fair_turns: bool = Field(
        True, description="Give a freed worker slot to the app id that has had the fewest calls started lately "
                           "(by weight) rather than to the oldest job; needs the Redis broker."
    )
    fair_direct_jobs: int = Field(
        4, ge=0, description="With fair turns, an app id's jobs go straight to the workers' queue while it has fewer "
                             "unfinished jobs than this; the rest wait in its own ready lists for a turn."
    )
    app_weights: str | None = Field(
        None, description="Turns per app id relative to the others, like '1234=3,*=1' (1 for any app id not listed)."
    )

    @field_validator("upstream_test_url", "upstream_prod_url")
    @classmethod
    def _upstream_is_http(cls, value: str | None) -> str | None:
        return _check_http_url(value)

    @field_validator("files_s3_url")
    @classmethod
    def _s3_url(cls, value: str | None) -> str | None:
        if value:
            from llmq.worker.files.s3 import parse_s3_url

            parse_s3_url(value)
        return value

    @field_validator("files_s3_endpoint_url")
    @classmethod
    def _s3_endpoint(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http(s) URL like https://s3.example.internal:9000, got {value!r}")
        return value.rstrip("/")

    @field_validator("webhook_secret")
    @classmethod
    def _whsec(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value

    @field_validator("webhook_schedule_s")
    @classmethod
    def _schedule(cls, value: str) -> str:
        parse_schedule(value)
        return value

    @field_validator("callback_allow")
    @classmethod
    def _allow(cls, value: str | None) -> str | None:
        AllowList.parse(value)
        return value

    @field_validator("model_concurrency", "app_concurrency", "model_rpm", "app_rpm", "app_weights")
    @classmethod
    def _limits(cls, value: str | None) -> str | None:
        LimitTable.parse(value)
        return value

    @field_validator("worker_metrics_addr")
    @classmethod
    def _metrics_addr(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"must be an IP address to listen on, like 127.0.0.1 or 0.0.0.0, got {value!r}") from None
        return value

    @functools.cached_property
    def metric_labels(self) -> LabelValues:
        """Models listed for metrics or named in a flow-control limit; app ids listed for metrics."""
        limits = self.flow_limits
        limited = {name for table in (limits.model_concurrency, limits.model_rpm) for name, _ in table.named}
        return LabelValues.of(parse_names(self.metrics_models) | limited, parse_names(self.metrics_app_ids))

    @functools.cached_property
    def flow_limits(self) -> FlowLimits:
        return FlowLimits(
            model_concurrency=LimitTable.parse(self.model_concurrency),
            app_concurrency=LimitTable.parse(self.app_concurrency),
            model_rpm=LimitTable.parse(self.model_rpm),
            app_rpm=LimitTable.parse(self.app_rpm),
            cooldown_on_429=self.cooldown_on_429,
        )

    @property
    def webhook_schedule(self) -> tuple[float, ...]:
        return parse_schedule(self.webhook_schedule_s)

    @property
    def callback_allow_list(self) -> AllowList:
        return AllowList.parse(self.callback_allow)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.app_key is not None:
            whole = self.app_key.get_secret_value()
            if self.app_id:
                whole = f"{self.app_id}:{whole}"
            try:
                check_composite_key(whole)
            except ValueError as err:
                source = "TAL_MLOPS_APP_ID + TAL_MLOPS_APP_KEY" if self.app_id else "TAL_MLOPS_APP_KEY"
                raise ValueError(f"{source} {err}") from None
        elif self.app_id:
            raise ValueError("TAL_MLOPS_APP_ID is set but TAL_MLOPS_APP_KEY is missing")
        if not self.dev_mode:
            if self.secret is None:
                raise ValueError("LLMQ_SECRET is missing: set a random string of 16+ characters (or LLMQ_DEV_MODE=1)")
            value = self.secret.get_secret_value()
            if len(value) < MIN_SECRET_CHARS or value.lower() in PLACEHOLDER_SECRETS:
                raise ValueError(f"LLMQ_SECRET must be a random string of {MIN_SECRET_CHARS}+ characters")
        if (self.files_s3_access_key_id is None) != (self.files_s3_secret_access_key is None):
            raise ValueError("set both LLMQ_FILES_S3_ACCESS_KEY_ID and LLMQ_FILES_S3_SECRET_ACCESS_KEY, or neither")
        if any(len(old) < MIN_SECRET_CHARS for old in self.previous_secrets):
            raise ValueError(f"LLMQ_SECRET_PREVIOUS: each secret must be {MIN_SECRET_CHARS}+ characters")
        if self.default_max_attempts > self.max_attempts_limit:
            raise ValueError("LLMQ_DEFAULT_MAX_ATTEMPTS must not exceed LLMQ_MAX_ATTEMPTS_LIMIT")
        longest_hold = self.read_timeout_s + max(self.retry_max_delay_s, self.retry_after_cap_s)
        if self.visibility_timeout_s <= longest_hold:
            raise ValueError(
                f"LLMQ_VISIBILITY_TIMEOUT_S ({self.visibility_timeout_s}) must exceed LLMQ_READ_TIMEOUT_S + "
                f"the longest retry delay ({longest_hold:g}), or running jobs would be delivered twice"
            )
        return self

    @property
    def service_key(self) -> str | None:
        """The service's own composite key, used for jobs submitted without one."""
        if self.app_key is None:
            return None
        key = self.app_key.get_secret_value()
        return f"{self.app_id}:{key}" if self.app_id else key

    @property
    def server_secret(self) -> str:
        return self.secret.get_secret_value() if self.secret is not None else DEV_SECRET

    @property
    def previous_secrets(self) -> tuple[str, ...]:
        if self.secret_previous is None:
            return ()
        return tuple(part.strip() for part in self.secret_previous.get_secret_value().split(",") if part.strip())

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or self.redis_url

    def upstream_url(self, environment: Environment | None) -> str | None:
        env = environment or self.upstream_default_env
        return self.upstream_test_url if env == "test" else self.upstream_prod_url

    @property
    def configured_environments(self) -> list[str]:
        return [env for env in ("test", "prod") if self.upstream_url(env)]  # type: ignore[arg-type]


def describe_error(err: ValidationError) -> str:
    """One line per problem, naming the variable, for a start-up failure."""
    lines = []
    for problem in err.errors():
        loc = [str(part) for part in problem.get("loc", ()) if part != "__root__"]
        message = str(problem.get("msg", "")).removeprefix("Value error, ")
        if loc:
            name = loc[0]
            variable = name if name.isupper() else f"LLMQ_{name.upper()}"
            lines.append(f"{variable}: {message}")
        else:
            lines.append(message)
    return "; ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read the settings, or stop with one readable line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        raise ConfigError(f"llmq: configuration error: {describe_error(err)}") from None


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
