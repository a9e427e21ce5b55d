# Two commands on a fresh machine: `make up` (whole stack, demo traffic) and `make test`.
# Each creates .venv and installs what it needs; no system packages by hand.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up test test-unit lint bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

up: $(BIN)/.installed
	$(BIN)/router dev

lint: $(BIN)/.installed
	$(BIN)/ruff check router schemas tests models loadtests
	$(BIN)/ruff format --check router schemas tests models loadtests
	$(BIN)/mypy
	$(BIN)/router export-schemas --check

test: lint
	$(BIN)/pytest -q tests/unit tests/integration

# The inner loop: pure tests only (seconds), no broker, Redis or browser.
test-unit: $(BIN)/.installed
	$(BIN)/pytest -q tests/unit

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
