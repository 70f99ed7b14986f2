# Two commands matter: `make serve` and `make test`. Both are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXAMPLE := examples/build/iris.joblib
EXAMPLE_DATA := examples/build/iris-example.csv

.PHONY: serve test check lint typecheck install install-dev bench overload mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[sklearn,postgres]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(EXAMPLE): examples/train_iris.py | $(VENV)/.installed
	$(BIN)/python examples/train_iris.py examples/build

serve: $(VENV)/.installed $(EXAMPLE)
	$(BIN)/shipyard models register $(EXAMPLE) --name iris --signature-from $(EXAMPLE_DATA) \
		--alias production --skip-unchanged --description "Iris classifier (quickstart example)"
	$(BIN)/shipyard apply -f examples/iris-deployment.yaml
	$(BIN)/shipyard server --host 127.0.0.1 --port 8000

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests examples benchmarks
	$(BIN)/ruff format --check src tests examples benchmarks

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

test: lint typecheck
	scripts/system-packages.sh
	$(BIN)/pytest

check: test

# Serving benchmark against MLServer (its own venv) and baselines; needs wrk and hey (apt-get install wrk hey).
MLSERVER := benchmarks/.venv-mlserver/bin/mlserver
$(MLSERVER):
	$(PYTHON) -m venv benchmarks/.venv-mlserver
	# MLServer 1.7.1 breaks on uvloop >= 0.22 ("no current event loop").
	benchmarks/.venv-mlserver/bin/pip install --quiet mlserver==1.7.1 mlserver-sklearn==1.7.1 'uvloop<0.22'

bench: $(VENV)/.installed-dev $(MLSERVER)
	$(BIN)/python benchmarks/run.py --duration 5 --concurrency 1,16,64

# Overload held: `heavy` on one worker offered 4x its capacity open loop (needs wrk and hey).
overload: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/overload.py --factor 4 --seconds 10

# Realistic one-line bugs in the decisions that matter, each against the tests meant to
# catch it (scripts/mutate.py; minutes, by hand, not part of `make test`).
mutate: $(VENV)/.installed-dev
	$(BIN)/python scripts/mutate.py

clean:
	rm -rf $(VENV) .shipyard examples/build .pytest_cache .mypy_cache .ruff_cache
