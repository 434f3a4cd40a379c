# Two commands set everything up on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/lambda-ml
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test test-unit reliability lint bench bento clean services-up services-down

setup: $(STAMP)

# Re-install only when the pins change: a warm `make setup` is a no-op.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,spark]'
	touch $(STAMP)

# Chromium for tests/e2e/test_mlflow_ui.py and Prometheus for tests/integration/test_job_metrics.py
# (apt-get, as root; a no-op once installed).
system-deps:
	scripts/install-system-deps.sh

services-up: setup
	$(CLI) kafka up
	$(CLI) mlflow up

services-down:
	-$(CLI) mlflow down
	-$(CLI) kafka down

demo: setup
	$(CLI) demo

# Integration tests start the real Kafka broker, MLflow server and S3Proxy through session fixtures
# and stop them at the end; nothing is left running.
test: setup system-deps
	$(CLI) kafka fetch
	$(CLI) s3 fetch
	$(PY) -m pytest --durations=20 tests

# Only the fault-injection and bad-input tests; their figures go to reports/reliability.{json,md}
# (`make test` runs them too and writes the same report).
reliability: setup
	$(CLI) kafka fetch
	$(CLI) s3 fetch
	$(PY) -m pytest -m reliability tests

test-unit: setup
	$(PY) -m pytest tests/unit

lint: setup
	$(VENV)/bin/ruff check common pipelines models serving streams tests bench
	$(VENV)/bin/ruff format --check common pipelines models serving streams tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

bench: setup
	$(CLI) bench all

# The serving layer as a bento (bentofile.yaml); `bentoml containerize` it where Docker runs.
bento: setup
	BENTOML_DO_NOT_TRACK=True $(VENV)/bin/bentoml build .

clean: services-down
	rm -rf var
