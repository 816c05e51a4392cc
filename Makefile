PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: setup test lint format demo

setup:  ## create .venv with the CPU build of torch and sftgate in editable mode
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'

test:  ## the default test tiers (no GPU, no real model)
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check sftgate tests benchmarks scripts
	$(BIN)/ruff format --check sftgate tests benchmarks scripts
	$(BIN)/mypy

format:
	$(BIN)/ruff format sftgate tests benchmarks scripts
	$(BIN)/ruff check --fix sftgate tests benchmarks scripts

demo:
	$(BIN)/sftgate demo
