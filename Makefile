# Two commands set everything up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Celery and arq cannot share an environment (redis-py < 6 against >= 6.4): the Celery
# engine's tests run in a second one.
CELERY_VENV := .venv-celery
CELERY_STAMP := $(CELERY_VENV)/.installed

.PHONY: test demo bench lint typecheck clean venv servers docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench,docs]'
	touch $(STAMP)

$(CELERY_STAMP): pyproject.toml
	$(PYTHON) -m venv $(CELERY_VENV)
	$(CELERY_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CELERY_VENV)/bin/python -m pip install --quiet -e '.[dev-celery]'
	touch $(CELERY_STAMP)

venv: $(STAMP)

# verifytypes.sh: pyright --verifytypes on the installed wheel, 100% or it fails (every public
# name typed for users' checkers); it installs its pinned pyright into $(VENV)/pyright.
lint: $(STAMP)
	$(BIN)/ruff check proactive_async tests benchmarks docs
	$(BIN)/ruff format --check proactive_async tests benchmarks docs
	VENV=$(CURDIR)/$(VENV) bash scripts/verifytypes.sh

typecheck: $(STAMP)
	$(BIN)/mypy proactive_async

# The documentation site (mkdocs.yml, docs/) into build/site, offline; --strict: a broken
# link, a missing page or an API reference that does not resolve fails the build.
# NO_MKDOCS_2_WARNING: Material prints a banner about its successor on every build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# What the tests start (redis-server and PostgreSQL on their own free ports, headless
# Chromium), installed if missing.
servers:
	bash scripts/ensure-servers.sh

test: lint typecheck docs servers $(CELERY_STAMP)
	rm -f .coverage .coverage.*
	# Subprocesses (the CLI, arq workers) report coverage too (coverage's .pth hook).
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(BIN)/coverage run -m pytest
	# The Celery engine, in its own environment (celery and arq cannot share one).
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(CELERY_VENV)/bin/coverage run -m pytest tests/test_celery_workers.py tests/test_celery_recipes.py
	$(BIN)/coverage combine --quiet
	$(BIN)/coverage report

demo: $(STAMP)
	$(BIN)/proactive-async demo

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(CELERY_VENV) build/site .coverage .coverage.* .mypy_cache .pytest_cache .ruff_cache
