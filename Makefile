# The two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test setup setup-dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

setup: $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e .

setup-dev: $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e '.[dev,spark]'

demo: setup
	$(BIN)/clvtier demo --out demo-run

test: setup-dev
	$(BIN)/python -m pytest -q

lint: setup-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) demo-run .pytest_cache .hypothesis
