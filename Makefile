# Two commands matter: `make demo` and `make test`. Both create .venv and install the pinned set first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# two pytest-xdist workers, one per core (tests/conftest.py gives each one torch thread)
PYTEST_ARGS ?= -n 2 --durations=25

.PHONY: demo test lint gpu-check install lock clean help

help:
	@echo "make demo   - create .venv, install the pinned dependencies, run the end-to-end CPU demo"
	@echo "make test   - create .venv, install the pinned dependencies, lint (ruff), run the test suite"
	@echo "make lint   - ruff check + ruff format --check (line length 120; settings in pyproject.toml)"
	@echo "make gpu-check - on one CUDA GPU (< 8 min): cuda tests, torchrun/NCCL/bf16/compile training, sampling, eval"
	@echo "make lock   - re-resolve requirements/lock.txt from pyproject.toml (needs the registry)"

install: $(STAMP)

# Re-installs only when the lock file or pyproject.toml changed.
$(STAMP): requirements/lock.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

LINT_PATHS := src tests benchmarks scripts

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# One JSON line per row (images/s, peak memory, MFU for LightningDiT-XL/1, pass/fail); see docs/benchmarks.md.
gpu-check: $(STAMP)
	$(BIN)/python benchmarks/gpu_check.py --json runs/gpu-check/rows.jsonl --out runs/gpu-check

demo: $(STAMP)
	$(BIN)/python -m vfmvae pipeline run configs/pipeline/demo.yaml

lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" -e ".[dev,tensorboard,diffusers]"
	{ echo "# The exact, tested dependency set of vfmvae (runtime + extras tensorboard, diffusers, dev)."; \
	  echo "# Regenerate: make lock   (then review the diff)."; \
	  .venv-lock/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|wheel)=='; } > requirements/lock.txt
	rm -rf .venv-lock

clean:
	rm -rf $(VENV) runs/demo
