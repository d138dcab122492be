# The first two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)  ## the whole service on this machine (Redis and the mock proxy started when not configured)
	$(VENV)/bin/llmq-dev

test: $(STAMP)  ## the test-suite, on real Redis, workers and HTTP servers
	$(VENV)/bin/pytest

bench: $(STAMP)  ## the performance benchmark: prints its table (BENCH_ARGS=--quick for a short run)
	$(VENV)/bin/python -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy api worker devstack cli mockproxy

clean:
	rm -rf $(VENV) .llmq
