# Two commands set everything up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench lint typecheck clean venv servers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check proactive_async tests benchmarks
	$(BIN)/ruff format --check proactive_async tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy proactive_async

# The servers the tests start on their own free ports (redis-server), installed if missing.
servers:
	bash scripts/ensure-servers.sh

test: lint typecheck servers
	rm -f .coverage .coverage.*
	# Subprocesses (the CLI, arq workers) report coverage too (coverage's .pth hook).
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(BIN)/coverage run -m pytest
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

demo: $(STAMP)
	$(BIN)/proactive-async demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .coverage .coverage.* .mypy_cache .pytest_cache .ruff_cache
