# Thin wrapper: venv bootstrap, then the lowrank-deploy CLI does the work.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODEL  ?= vgg11
DATA   ?= digits
CONFIG ?=
ARGS   ?=

.PHONY: deploy test bench bench-quick fuzz clean venv decoder decoder-asan decoder-deps arm64-check peers-venv \
        test-peers bench-peers

venv: $(STAMP)

# torch is pinned to the CPU build first (offline wheel); the project's ranges then admit it and add nothing CUDA.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev,data]'
	# pretrained PaddleOCR det/cls/rec ONNX models for the tests (only the model files are used: no OpenCV needed)
	$(BIN)/pip install -q --no-deps rapidocr-onnxruntime==1.4.4
	touch $(STAMP)

deploy: $(STAMP)
	$(BIN)/lowrank-deploy run --model $(MODEL) --data $(DATA) $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

bench: $(STAMP)
	$(BIN)/lowrank-deploy bench all $(ARGS)

# Smoke run of every suite on tiny inputs (tests/pipeline/test_bench.py runs the same inside `make test`).
bench-quick: $(STAMP)
	$(BIN)/lowrank-deploy bench all --quick $(ARGS)

# The optional peers of `bench peers` live in their own environment (they pin their own dependencies). NNCodec is
# installed without its declared dependencies (torchvision, numpy<2 would replace the CPU torch): the suite only
# uses its codec core, which needs numpy alone; building it needs a C++ compiler.
PEERS_VENV ?= .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

peers-venv: $(PEERS_STAMP)

$(PEERS_STAMP): pyproject.toml
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q torch==2.13.0
	$(PEERS_VENV)/bin/pip install -q -e '.[dev,data,peers]'
	$(PEERS_VENV)/bin/pip install -q --no-deps nncodec==2.1.3
	touch $(PEERS_STAMP)

# tests/peers is collected only where the peers import (not in `make test`'s environment)
test-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python -m pytest -q tests/peers tests/pipeline/test_bench_peers.py

bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/lowrank-deploy bench peers $(ARGS)

fuzz: $(STAMP)
	$(BIN)/python -m pipeline.entropy.fuzz $(ARGS)

# Shipped graphs on an arm64 ONNX Runtime under qemu user-mode vs x86 (set-up cached under ~/.cache/lowrank-deploy).
DEPLOY ?= artifacts/$(MODEL)/deploy
arm64-check: $(STAMP)
	$(BIN)/python scripts/arm64/check.py run --deploy $(DEPLOY) $(ARGS)

clean:
	rm -rf artifacts .pytest_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Native reference decoder (native/lrdc, C99): needs a C compiler, libc and libzstd with its headers
# (Debian: apt-get install -y libzstd-dev). Builds $(DECODER_BUILD)/lrdc-decode and liblrdc.a.
CC            ?= cc
DECODER_BUILD ?= build/decoder
DECODER_SRC   := $(filter-out native/lrdc/lrdc_decode.c,$(wildcard native/lrdc/*.c))
DECODER_CFLAGS ?= -std=c99 -Wall -Wextra -Werror -O2
DECODER_LIBS  := -lzstd
ASAN_FLAGS    := -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer

decoder-deps:
	@printf '#include <zstd.h>\nint main(void){return 0;}\n' | $(CC) -x c - -o /dev/null $(DECODER_LIBS) 2>/dev/null \
	  || { echo "make decoder needs a C compiler and the libzstd headers: apt-get install -y libzstd-dev" >&2; exit 1; }

decoder: decoder-deps
	@mkdir -p $(DECODER_BUILD)
	for f in $(DECODER_SRC); do $(CC) $(DECODER_CFLAGS) -c $$f -o $(DECODER_BUILD)/$$(basename $$f .c).o || exit 1; done
	rm -f $(DECODER_BUILD)/liblrdc.a && ar rcs $(DECODER_BUILD)/liblrdc.a $(addprefix $(DECODER_BUILD)/,$(notdir $(DECODER_SRC:.c=.o)))
	$(CC) $(DECODER_CFLAGS) -Inative/lrdc native/lrdc/lrdc_decode.c $(DECODER_BUILD)/liblrdc.a $(DECODER_LIBS) -o $(DECODER_BUILD)/lrdc-decode

decoder-asan:
	$(MAKE) decoder DECODER_BUILD=$(DECODER_BUILD)-asan DECODER_CFLAGS="$(DECODER_CFLAGS) $(ASAN_FLAGS)"
