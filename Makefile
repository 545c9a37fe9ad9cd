# Two commands on a fresh Linux machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock

.PHONY: install lock run test test-long check lint types imports docs chaos bench clean system-packages

## Everything pinned, every file checked against its hash in $(LOCK); then the project itself.
## Reinstalls only when the lock or pyproject.toml changed since the last install.
$(STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

## Refresh $(LOCK) after changing the dependencies in pyproject.toml: `make lock` (it keeps the
## pinned versions that still fit; `make lock LOCK_FLAGS=--upgrade` takes the newest releases),
## then `make install`, and commit both files. uv resolves from PyPI itself, for every platform
## and Python 3.11+, and ignores this machine's pip configuration (local indexes, constraints),
## so the lock installs anywhere.
LOCK_FLAGS ?=
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv>=0.9,<1"
	$(BIN)/uv pip compile --no-config --universal --python-version 3.11 --generate-hashes \
		--extra embedded --extra ai --extra dev --index-url https://pypi.org/simple \
		--custom-compile-command "make lock" --quiet $(LOCK_FLAGS) -o $(LOCK) pyproject.toml

## The whole stack (embedded PostgreSQL + Redis unless DATABASE_URL / REDIS_URL are set).
run: $(STAMP)
	$(BIN)/python -m devstack.run

## The distribution's programs some tests use (Chromium, Node.js, espeak-ng, sox): apt-get
## installs them when run as root on Debian/Ubuntu; otherwise it says what is missing (and fails
## the build only in CI, `CI` set, where the tests that need them must run).
system-packages:
	@scripts/system-packages.sh

## The whole suite, against a real PostgreSQL and Redis that the suite starts itself.
## Two processes (pytest-xdist, a test file to a process): most tests wait on servers, real
## time and browsers, and each process starts its own PostgreSQL and Redis. TEST_PROCESSES=1
## runs it in one.
TEST_PROCESSES ?= 2
test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -m "not chaos_long and not long" \
		--numprocesses $(TEST_PROCESSES) --dist loadfile

## The long suite: calls of minutes at real-time pace (e.g. 4 two-party calls of 5 minutes
## against the default flaky mock).
test-long: $(STAMP) system-packages
	$(BIN)/python -m pytest -q -m long

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

types: $(STAMP)
	$(BIN)/mypy .

imports: $(STAMP)
	$(BIN)/lint-imports

## docs/configuration.md, from settings.py (each setting's description), and the dashboard's
## service/dashboard/contract.js, from the server's rules; a test fails while either is stale.
docs: $(STAMP)
	$(BIN)/python -m scripts.config_docs
	$(BIN)/python -m scripts.contract_js

## What CI runs: formatting, lint, types (strict), import contracts, then the suite.
check: lint types imports test

## The full chaos suite: kills workers, restarts Redis, stops PostgreSQL, under load.
chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m "chaos or chaos_long" tests/chaos

## Every benchmark suite (ingestion, back half, access cost, the feed's fan-out, Redis Cluster,
## the local AI's quality, real calls, live transcripts), each on its own stack, each writing
## its section of BENCHMARKS.md: `python -m bench <suite> [--quick] [--write]` runs one
## (bench/__main__.py); tests/bench/ runs every suite's --quick smoke in the test suite. Real calls
## alone take about half an hour (10-minute calls, a ramp, a 10-minute soak).
bench: $(STAMP)
	$(BIN)/python -m bench all --write

clean:
	rm -rf $(VENV) .data build *.egg-info
