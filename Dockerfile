# syntax=docker/dockerfile:1
# One image for every llmq process: the API (default), Celery workers and Flower; `--target mock` adds the mock proxy.
#
#   docker build -t llmq:latest .
#   docker run --env-file .env -p 8000:8000 llmq:latest                          # API
#   docker run --env-file .env llmq:latest celery -A llmq.worker.celery_app worker \
#       -Q llmq.webhooks,llmq.batches,llmq.high,llmq.normal,llmq.low                           # worker
#
# docker-compose.yml, ops/k8s/ and docs/operations.md show the exact commands and health checks.

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: wheels of the pinned dependencies and of the project (a compiler is here in case a dependency has
#     no wheel for the target platform; none of it reaches the final image). requirements/mock.txt is the runtime
#     lock plus the mock proxy's aiohttp, so one wheel directory serves both images below.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY requirements ./requirements
RUN pip wheel --wheel-dir /wheels -r requirements/mock.txt
COPY pyproject.toml README.md ./
COPY api ./api
COPY worker ./worker
COPY mockproxy ./mockproxy
COPY devstack ./devstack
COPY cli ./cli
COPY bench ./bench
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the runtime lock only, then the project without resolving anything again.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    LLMQ_LOG_FORMAT=json
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements/runtime.txt,target=/tmp/runtime.txt \
    pip install --no-index --find-links=/wheels -r /tmp/runtime.txt \
    && pip install --no-index --find-links=/wheels --no-deps llmq \
    && groupadd --system --gid 10001 llmq \
    && useradd --system --uid 10001 --gid llmq --home-dir /home/llmq --create-home --shell /usr/sbin/nologin llmq
# An empty working directory: settings come from the environment, never from a stray .env.
WORKDIR /home/llmq
USER 10001:10001

# 8000 API (/v1, /metrics, /healthz, /readyz), 5555 Flower, 9808 a worker's Prometheus endpoint.
EXPOSE 8000 5555 9808

# No HEALTHCHECK: the right check depends on the role; docker-compose.yml and the k8s manifests define them.
CMD ["uvicorn", "--factory", "llmq.api.main:app_from_env", "--http", "llmq.api.head_limit:HeadLimitProtocol", \
     "--host", "0.0.0.0", "--port", "8000", \
     "--no-access-log", "--timeout-graceful-shutdown", "30"]

# --- mock: the runtime image plus aiohttp, for compose's dev-profile mock proxy (`docker build --target mock`).
FROM runtime AS mock
USER root
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    --mount=type=bind,source=requirements/mock.txt,target=/tmp/mock.txt \
    pip install --no-index --find-links=/wheels -r /tmp/mock.txt
USER 10001:10001
CMD ["llmq-mock-proxy", "--host", "0.0.0.0", "--port", "8090"]

# --- the default target: the runtime image.
FROM runtime
