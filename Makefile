# The first two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
# requirements/*.txt pin what every install uses (runtime; + mock proxy; + dev tools); `make lock` writes them.
COMPILE := $(VENV)/bin/uv pip compile pyproject.toml --quiet --upgrade --python-version 3.11 --universal \
	--custom-compile-command 'make lock'

.PHONY: run test lint bench lock clean

# The dev lock, then the project itself without resolving anything again.
$(STAMP): pyproject.toml requirements/dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements/dev.txt
	$(VENV)/bin/pip install --quiet --no-deps -e .
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

lock: $(STAMP)  ## the newest versions pyproject.toml allows, pinned; then run `make lint test` (README, "Upgrading")
	$(COMPILE) -o requirements/runtime.txt
	$(COMPILE) --extra mock -c requirements/runtime.txt -o requirements/mock.txt
	$(COMPILE) --extra dev -c requirements/runtime.txt -o requirements/dev.txt

clean:
	rm -rf $(VENV) .llmq .typecheck
