# The two commands a fresh machine runs:  make demo  and  make test.
# Each creates .venv when it is missing and installs the project into it first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test test-fast lint dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# DAGSTER_HOME for `dagster dev` started in this folder (dagster reads .env), unless one is
# set already; and the instance folder, whose dagster.yaml is this project's.
.env: Makefile
	@printf 'DAGSTER_HOME=$${DAGSTER_HOME:-%s/.dagster}\n' "$(CURDIR)" > .env
	@mkdir -p .dagster && { [ -e .dagster/dagster.yaml ] || ln -s ../dagster.yaml .dagster/dagster.yaml; }

setup: $(STAMP) .env
	@.ci/system-deps

demo: setup
	$(BIN)/anime-pipeline demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy anime_pipeline

# Every test, in parallel (pytest-xdist), after the linters.
test: lint
	$(BIN)/pytest -n auto

# The inner loop: everything but ffmpeg renders, end-to-end runs, dagster dev and PostgreSQL.
test-fast: setup
	$(BIN)/pytest -n auto -m "not slow"

dev: setup
	$(BIN)/dagster dev

clean:
	rm -rf $(VENV) .env .pytest_cache .mypy_cache .ruff_cache .hypothesis
