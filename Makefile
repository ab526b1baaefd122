# The two set-up commands of the README. Both create .venv in the repository when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test dev lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: install, then run the main job on the embedded default (SQLite under ./.dw) and print the result
demo: $(STAMP)
	$(BIN)/dw-pipelines demo

## test: install, then run the whole suite against PostgreSQL (DW_TEST_DATABASE_URL, or a throwaway pgserver)
test: $(STAMP)
	$(BIN)/python -m pytest

## dev: the Dagster UI + daemon on the embedded default; run history kept in .dw/dagster-home
dev: $(STAMP)
	mkdir -p .dw/dagster-home
	$(BIN)/dw-pipelines db upgrade
	DAGSTER_HOME=$(CURDIR)/.dw/dagster-home $(BIN)/dagster dev

lint: $(STAMP)
	$(BIN)/ruff check dw_pipelines dw_pipelines_tests
	$(BIN)/ruff format --check dw_pipelines dw_pipelines_tests

clean:
	rm -rf $(VENV) .dw .pytest_cache .ruff_cache *.egg-info
