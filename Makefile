PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
LINT_PATHS = sftgate tests $(wildcard benchmarks scripts)

.PHONY: setup test lint format demo

setup:  ## create .venv with the CPU build of torch and sftgate in editable mode
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'

test:  ## the default test tiers (no GPU, no real model)
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

format:
	$(BIN)/ruff format $(LINT_PATHS)
	$(BIN)/ruff check --fix $(LINT_PATHS)

demo:
	$(BIN)/sftgate demo
