# Relay: `make run` starts Relay on the example config; `make test` runs lint, types, layering and tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= examples/relay.json
PYTEST_ARGS ?=

.PHONY: setup setup-dev run test test-reliability lint format bench clean

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

# The reliability suite in full (RELAY_RELIABILITY=full): 20 kill rounds per database, the whole provider fault
# matrix, thousands of fuzzed SMTP sessions. Its report becomes docs/RELIABILITY.md; `make test` runs a bounded
# subset of the same tests.
test-reliability: setup-dev
	RELAY_RELIABILITY=full $(BIN)/pytest tests/reliability -p no:cacheprovider $(PYTEST_ARGS)
	cp test-artifacts/reliability/REPORT.md docs/RELIABILITY.md
	@echo "reliability: report written to docs/RELIABILITY.md"

# Every benchmark, each side by side with its peer where there is one, then docs/BENCHMARKS.md from this run.
BENCHMARKS := smtp http_api e2e_http decision capacity memory scale_out
bench: setup-dev
	rm -rf bench/results/latest
	$(foreach b,$(BENCHMARKS),$(BIN)/python -m bench.$(b) &&) true
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
