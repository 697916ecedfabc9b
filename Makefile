# The two commands a newcomer needs (see README.md).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup run test test-fast bench

$(BIN)/safs: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $(BIN)/safs

setup: $(BIN)/safs

run: setup          ## the quickstart pipeline on embedded data, then its table
	$(BIN)/safs run experiments/quickstart.yaml
	$(BIN)/safs table results/quickstart

test: setup         ## every test, slow end-to-end runs included
	$(BIN)/python -m pytest -q

test-fast: setup    ## unit tests only
	$(BIN)/python -m pytest -q -m "not slow"

bench: setup
	$(BIN)/python benchmarks/train_overhead.py
