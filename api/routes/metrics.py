"""/metrics: Prometheus exposition of the API process, with queue depths read at scrape time."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from llmq.worker import redis_keys
from llmq.worker.jobs import unfinished
from llmq.worker.observability import metrics

router = APIRouter(tags=["operations"])


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus metrics: jobs submitted and finished, queue depth per queue, unfinished jobs."""
    client = request.app.state.redis
    partitions = await client.zrange(redis_keys.UNFINISHED_PARTITIONS, 0, -1)  # one per app id with jobs lately
    pipe = client.pipeline(transaction=False)
    for queue in redis_keys.QUEUES_IN_ORDER:
        pipe.llen(queue)
    for key in unfinished.counted_sets(partitions):
        pipe.zcard(key)
    counts = await pipe.execute()
    depths, sizes = counts[:len(redis_keys.QUEUES_IN_ORDER)], counts[len(redis_keys.QUEUES_IN_ORDER):]
    for queue, depth in zip(redis_keys.QUEUES_IN_ORDER, depths, strict=True):
        metrics.QUEUE_DEPTH.labels(queue).set(depth)
    metrics.UNFINISHED_JOBS.set(sum(sizes))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
