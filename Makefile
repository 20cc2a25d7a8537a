# Two commands for a new user: `make train` and `make test`. Both create the environment if it is missing.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
UV := $(shell command -v uv 2>/dev/null || echo "python3 -m uv")
ARGS ?=
PYTEST_ARGS ?=

.PHONY: env train test demo bench lint clean slurm-up slurm-down

# torch and torchvision are resolved together from the index by uv.lock (never a local CPU wheel).
$(BIN)/facelab-train: pyproject.toml uv.lock
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	$(UV) sync --frozen
	@touch $@

env: $(BIN)/facelab-train

train: env  ## the main job on the embedded default (synthetic faces, CPU, < 10 min)
	$(BIN)/facelab-train $(ARGS)

test: env  ## the whole suite, as CI runs it (with the local Slurm when this machine can start one)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then bash slurm/local/up.sh; \
	else echo "not root or no apt-get: the local Slurm is not started, the slurm tests will skip"; fi
	$(BIN)/pytest $(PYTEST_ARGS)

demo: env  ## Barbershop and DragGAN on the shipped 128 px models, CPU, minutes: outputs/demo/figures.md
	$(BIN)/python -m facelab.cli.demo $(ARGS)

bench: env  ## speed / memory ratios against references
	@for script in benchmarks/bench_*.py; do echo "== $$script"; $(BIN)/python $$script || exit 1; done

lint: env
	$(BIN)/ruff check .

slurm-up:  ## a one-node Slurm on this machine (root; installs slurm-wlm + munge with apt if needed)
	bash slurm/local/up.sh

slurm-down:
	bash slurm/local/down.sh

clean:
	rm -rf logs outputs multirun .pytest_cache
