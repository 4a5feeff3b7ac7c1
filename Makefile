# famprov: `make run` to try it, `make test` to check it.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run install browser newman test bench lint typecheck clean

# The runtime install: the package alone.
$(VENV)/.run-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "famprov needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

# The development install: the package with its test and lint tools.
$(VENV)/.dev-installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "famprov needs Python 3.11 or newer (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.run-installed

install: $(VENV)/.dev-installed

run: $(VENV)/.run-installed
	$(BIN)/famprov serve

# The page tests drive Debian's Chromium; Playwright's own browser download
# needs hosts this project does not reach.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "test: installing chromium from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq chromium >/dev/null; }

# The suite runs the generated Postman collection with newman, Postman's own
# runner, from npm; node and npm come from Debian's packages when missing.
NEWMAN := $(VENV)/node/node_modules/.bin/newman
$(NEWMAN):
	@command -v npm >/dev/null 2>&1 || { \
		echo "test: installing node and npm from Debian's packages"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq nodejs npm >/dev/null; }
	npm install --silent --no-audit --no-fund --prefix $(VENV)/node newman@6

newman: $(NEWMAN)

test: $(VENV)/.dev-installed browser newman
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy
	$(BIN)/pytest

# The benchmark: wrk comes from Debian's packages.
bench: $(VENV)/.dev-installed
	@command -v wrk >/dev/null 2>&1 || { \
		echo "bench: installing wrk from Debian's packages"; \
		apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	$(BIN)/python bench/bench.py $(BENCH_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

clean:
	rm -rf $(VENV) famprov.db famprov.db-wal famprov.db-shm famprov-mail test-output
