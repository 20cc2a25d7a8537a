# Two commands for a new user: `make train` and `make test`. Both create the environment if it is missing.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
ARGS ?=
PYTEST_ARGS ?=

.PHONY: env train test bench lint clean

# torch and torchvision are resolved together from the index by uv.lock (never a local CPU wheel).
$(BIN)/facelab-train: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

env: $(BIN)/facelab-train

train: env  ## the main job on the embedded default (synthetic faces, CPU, < 10 min)
	$(BIN)/facelab-train $(ARGS)

test: env  ## the whole suite, as CI runs it
	$(BIN)/pytest $(PYTEST_ARGS)

bench: env  ## speed / memory ratios against references
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: env
	$(BIN)/ruff check .

clean:
	rm -rf logs outputs multirun .pytest_cache
