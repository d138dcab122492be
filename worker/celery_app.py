"""The Celery app, configured from the one settings object."""

from __future__ import annotations

import logging

from celery import Celery
from celery.signals import setup_logging, worker_ready, worker_shutdown
from kombu import Queue
from prometheus_client import start_http_server

from llmq.worker import redis_keys
from llmq.worker.observability.logs import configure_logging
from llmq.worker.runtime.allocator import return_large_blocks
from llmq.worker.runtime.gc_tuning import freeze_startup_objects
from llmq.worker.settings import Settings, get_settings

REDIS_TRANSPORT = "llmq.worker.runtime.redis_transport:Transport"
CONSUMER = "llmq.worker.runtime.consumer:Consumer"
POOLS = {"asyncio": "llmq.worker.runtime.asyncio_pool:AsyncioPool", "threads": "threads"}


def celery_config(settings: Settings) -> dict[str, object]:
    broker = settings.effective_broker_url
    return {
        "broker_url": broker,
        "broker_transport": REDIS_TRANSPORT if broker.startswith(("redis://", "rediss://")) else None,
        # Jobs have their own records in Redis; Celery's result backend would only duplicate them.
        "task_ignore_result": True,
        "result_backend": None,
        # A job is acknowledged only once its attempt is over; a lost worker's jobs come back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            # Queues are read in the order the worker lists them: high, normal, low.
            "queue_order_strategy": "priority",
            # Priority is the queue a job goes to, never a message's priority within a queue, so each queue is
            # one Redis list: a worker's BRPOP names 4 keys instead of kombu's 16 (four steps per queue).
            "priority_steps": [0],
            # How often a worker looks for a lost worker's messages; recovery takes
            # visibility_timeout_s plus up to this long.
            "unacked_restore_interval": settings.redelivery_check_s,
            "unacked_restore_throttle": 1,
            # A restore lock left behind by a Redis outage must not hold redelivery up for long.
            "unacked_mutex_expire": 60,
        },
        # Calls are long: take only as many messages as there are free slots. Proxy calls and webhook
        # deliveries have slots of their own (`llmq.worker.runtime.lanes`); the worker's are the sum.
        "worker_prefetch_multiplier": 1,
        "worker_pool": POOLS[settings.worker_pool],
        "worker_concurrency": settings.worker_concurrency + settings.webhook_concurrency,
        "task_queues": [Queue(name) for name in redis_keys.QUEUES_IN_ORDER],
        "task_default_queue": redis_keys.QUEUE_BY_PRIORITY["normal"],
        "task_serializer": "json",
        "accept_content": ["json"],
        # Flower sees every task, its retries and its outcome; the events go out in batches.
        "worker_send_task_events": True,
        "worker_consumer": CONSUMER,
        # One more broker round trip per submission, for a PENDING state Flower can do without.
        "task_send_sent_event": settings.task_sent_events,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


def create_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("llmq", include=["llmq.worker.tasks"])
    app.conf.update(celery_config(settings))
    return app


@setup_logging.connect
def _configure_logging(**_: object) -> None:
    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


_sweeper = None


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    global _sweeper
    from llmq.worker.batches.runner import resume_stalled, sweep_files
    from llmq.worker.job_runner import runtime  # imported late: the tasks module imports this one
    from llmq.worker.sweeper import Sweeper
    from llmq.worker.tasks import batch_runtime, enqueue, enqueue_batch_step, enqueue_delivery

    _sweeper = Sweeper(runtime(), enqueue, enqueue_delivery, also=(
        lambda: resume_stalled(runtime(), enqueue_batch_step),
        lambda: sweep_files(batch_runtime().files, runtime().settings.files_abandoned_write_s),
    ))
    _sweeper.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    if _sweeper is not None:
        _sweeper.stop()


@worker_ready.connect
def _freeze_startup_objects(**_: object) -> None:
    freeze_startup_objects()
    return_large_blocks()


@worker_ready.connect
def _serve_metrics(**_: object) -> None:
    settings = get_settings()
    port = settings.worker_metrics_port
    if port:
        try:
            start_http_server(port, addr=settings.worker_metrics_addr)
        except OSError as err:  # another worker on this machine has it; its metrics are served there
            logging.getLogger("llmq.worker").warning("metrics port %d unavailable: %s", port, err)


app = create_celery()
