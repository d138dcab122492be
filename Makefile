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
	$(VENV)/bin/python -m llmq.bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	@# mypy cannot follow the package-dir mapping, so it reads the folders through a tree of links named as installed.
	@rm -rf .typecheck && mkdir -p .typecheck/llmq
	@for d in api worker cli mockproxy devstack bench; do ln -s ../../$$d .typecheck/llmq/$$d; done
	MYPYPATH=.typecheck $(VENV)/bin/mypy --namespace-packages --explicit-package-bases -p llmq

clean:
	rm -rf $(VENV) .llmq .typecheck
