# dicomhub: the two set-up commands of the README.
#   make run   install dicomhub in .venv and start the server on the embedded default
#   make test  install everything the tests need (Python packages, DCMTK, PostgreSQL) and run
#              them: the whole suite on SQLite + file storage and, side by side with it, the
#              end-to-end suite again on PostgreSQL + S3 (a throw-away cluster and a local S3
#              server, see tests/backends.py), leaving out the tests marked backend_neutral
#              (scripts/run-tests.sh)
# Both install the exact versions of constraints.txt (pyproject.toml only gives ranges), so CI
# and the benchmarks (make bench, make bench-index) run on a known set.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: run install test test-deps lint bench bench-index clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .

run: install
	$(BIN)/dicomhub serve

test-deps: $(BIN)/python
	bash scripts/install-test-deps.sh
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	# The example plugin the plugin tests enable (tests/e2e/test_plugins.py).
	$(BIN)/python -m pip install --quiet --no-deps -e examples/plugins/dicomhub-example-plugin

test: test-deps
	$(BIN)/ruff check src tests benchmarks fuzz
	$(BIN)/lint-imports
	$(BIN)/mypy src
	bash scripts/run-tests.sh $(BIN)/python $(PYTEST_ARGS)

lint: test-deps
	$(BIN)/ruff check src tests benchmarks fuzz
	$(BIN)/lint-imports
	$(BIN)/mypy src

bench: test-deps
	$(BIN)/python benchmarks/dimse_bench.py

bench-index: test-deps
	$(BIN)/python benchmarks/index_scale_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
