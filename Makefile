# Relay: `make run` starts Relay on the example config; `make test` runs lint, types, layering and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/relay.json
PYTEST_ARGS ?=

.PHONY: setup setup-dev run test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.run-installed

setup: $(VENV)/.run-installed

setup-dev: $(VENV)/.dev-installed

run: setup
	$(BIN)/relay serve --config $(CONFIG)

lint: setup-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup-dev
	$(BIN)/ruff check --fix src tests bench
	$(BIN)/ruff format src tests bench

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: setup-dev
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.limits
	$(BIN)/python -m bench.balancer
	$(BIN)/python -m bench.decision
	$(BIN)/python -m bench.webhooks

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
