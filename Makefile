# Two commands do all set-up on a fresh machine:
#   make run   - the portal with demo data at http://127.0.0.1:8000 (embedded services if no URLs)
#   make test  - the whole test suite (PostgreSQL and Redis from DATABASE_URL / REDIS_URL)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# Tests use the machine's PostgreSQL and Redis unless told otherwise.
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/energy_portal
TEST_REDIS_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test lint format bench-live bench-ingest bench-query bench-dr bench-outages \
	bench-pages system-deps clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.runtime: $(BIN)/python requirements.txt
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

$(VENV)/.bench: $(VENV)/.dev requirements-bench.txt
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

# Front-end libraries (uPlot) from npm, served from static/vendor/ by Django.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $@

# A WASM TimescaleDB (PGlite) served on the PostgreSQL protocol, for the TimescaleDB tests.
tests/timescale/pglite/node_modules/.installed: tests/timescale/pglite/package.json tests/timescale/pglite/package-lock.json
	npm ci --prefix tests/timescale/pglite --no-audit --no-fund --silent
	touch $@

# Debian's Chromium drives the browser tests (Playwright cannot download its own browser here);
# Debian's docker-compose renders compose.yaml for tests/test_compose.py (no engine needed).
SYSTEM_PACKAGES := chromium docker-compose
system-deps:
	@missing=""; for command in $(SYSTEM_PACKAGES); do \
		command -v $$command >/dev/null || missing="$$missing $$command"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
		else sudo apt-get update -qq && sudo apt-get install -y -qq $$missing >/dev/null; fi; fi

# RUN_ARGS passes options on, e.g. `make run RUN_ARGS="--port 8077"`.
run: $(VENV)/.runtime node_modules/.installed
	$(BIN)/python -m energy_portal.run $(RUN_ARGS)

test: $(VENV)/.dev node_modules/.installed tests/timescale/pglite/node_modules/.installed system-deps
	DATABASE_URL=$${DATABASE_URL:-$(TEST_DATABASE_URL)} REDIS_URL=$${REDIS_URL:-$(TEST_REDIS_URL)} \
		$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(VENV)/.dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# Benchmarks run on demand, never in the test suite; each prints its figures and ratios to the
# baseline it measures in the same run, and writes JSON to var/ (see bench/*/README.md).
bench-live: $(VENV)/.bench
	$(BIN)/python -m bench.live.run $(BENCH_ARGS)

bench-ingest: $(VENV)/.bench
	$(BIN)/python -m bench.ingest.run $(BENCH_ARGS)

bench-query: $(VENV)/.bench
	$(BIN)/python -m bench.query.run $(BENCH_ARGS)

bench-dr: $(VENV)/.bench
	$(BIN)/python -m bench.dr.run $(BENCH_ARGS)

bench-outages: $(VENV)/.bench
	$(BIN)/python -m bench.outages.run $(BENCH_ARGS)

bench-pages: $(VENV)/.bench
	$(BIN)/python -m bench.pages.run $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var node_modules tests/timescale/pglite/node_modules
