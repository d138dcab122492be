# syntax=docker/dockerfile:1
# One image for every llmq process: the API (default), Celery workers, Flower and the mock proxy.
#
#   docker build -t llmq:latest .
#   docker run --env-file .env -p 8000:8000 llmq:latest                          # API
#   docker run --env-file .env llmq:latest celery -A llmq.worker.celery_app worker \
#       -Q llmq.webhooks,llmq.batches,llmq.high,llmq.normal,llmq.low                           # worker
#
# docker-compose.yml, ops/k8s/ and docs/operations.md show the exact commands and health checks.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels for the project and all its dependencies (a compiler is here in case a
#     dependency has no wheel for the target platform; none of it reaches the final image).
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY mockproxy ./mockproxy
COPY devstack ./devstack
COPY cli ./cli
COPY bench ./bench
RUN pip wheel --wheel-dir /wheels .

# --- runtime
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    LLMQ_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels llmq \
    && groupadd --system --gid 10001 llmq \
    && useradd --system --uid 10001 --gid llmq --home-dir /home/llmq --create-home --shell /usr/sbin/nologin llmq
# An empty working directory: settings come from the environment, never from a stray .env.
WORKDIR /home/llmq
USER 10001:10001

# 8000 API (/v1, /metrics, /healthz, /readyz), 5555 Flower, 9808 a worker's Prometheus endpoint.
EXPOSE 8000 5555 9808

# No HEALTHCHECK: the right check depends on the role; docker-compose.yml and the k8s manifests define them.
CMD ["uvicorn", "--factory", "llmq.api.main:app_from_env", "--host", "0.0.0.0", "--port", "8000", \
     "--no-access-log", "--timeout-graceful-shutdown", "30"]
