# Thin wrapper: venv bootstrap, then the lowrank-deploy CLI does the work.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= vgg11
DATA   ?= digits
CONFIG ?=
ARGS   ?=

.PHONY: deploy test bench bench-quick fuzz clean venv arm64-check

venv: $(STAMP)

# torch is pinned to the CPU build first (offline wheel); the project's ranges then admit it and add nothing CUDA.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,data]'
	touch $(STAMP)

deploy: $(STAMP)
	$(BIN)/lowrank-deploy run --model $(MODEL) --data $(DATA) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/lowrank-deploy bench all $(ARGS)

fuzz: $(STAMP)
	$(BIN)/python -m pipeline.entropy.fuzz $(ARGS)

# Shipped graphs on an arm64 ONNX Runtime under qemu user-mode vs x86 (set-up cached under ~/.cache/lowrank-deploy).
DEPLOY ?= artifacts/$(MODEL)/deploy
arm64-check: $(STAMP)
	$(BIN)/python scripts/arm64/check.py run --deploy $(DEPLOY) $(ARGS)

clean:
	rm -rf artifacts .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
