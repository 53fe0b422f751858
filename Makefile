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

# On the example config, `make run` gives the dashboard an admin key of its own, made once and kept in
# var/dashboard-key (mode 600, never printed); any other CONFIG brings its own keys.
ifeq ($(CONFIG),examples/relay.json)
run: setup
	@mkdir -p var && { [ -s var/dashboard-key ] || (umask 077 && $(BIN)/python -c 'import secrets; print(secrets.token_urlsafe(24))' > var/dashboard-key); }
	@echo "relay: dashboard at http://127.0.0.1:$${RELAY_HTTP__PORT:-8080}/dashboard; log in with the key in var/dashboard-key"
	RELAY_HTTP__API_KEYS="[{\"name\": \"local-admin\", \"key\": \"$$(cat var/dashboard-key)\", \"role\": \"admin\"}]" \
		$(BIN)/relay serve --config $(CONFIG)
else
run: setup
	$(BIN)/relay serve --config $(CONFIG)
endif

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
