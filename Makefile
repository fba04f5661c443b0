# invflow: `make test` and `make demo` each do their own idempotent set-up on a fresh machine.
#
#   make demo    set-up + the project's main job (python -m detectors demo)
#   make test    set-up + the full test suite
#   make lint    ruff check + ruff format --check (rules in pyproject.toml); .ci/run runs it first
#   make bench   set-up + the benchmark suites and the side-by-side comparison
#   make data    installs the offline datasets (Debian dataset-fashion-mnist)
#   make gpu-check   on a GPU machine, within GPU_CHECK_BUDGET_S (default 540 s): build for its
#                    arch + every op's CUDA registration, bad-input probe, CUDA tests (a floor
#                    on the passed count), training smoke, compute-sanitizer (4 tools), CUDA
#                    bench (never gates) -- one command, logs in GPU_CHECK_OUT, a verification
#                    line naming the source hash (tools/gpu_check.sh; the machine's python3,
#                    no set-up); DRY_RUN=1 runs its CPU parts (make test does)
#
# Set-up: a venv in .venv; torch==2.13.0 (the CPU wheel from /opt/wheels when present)
# only when the venv has no torch -- never an unpinned torch, which resolves to a 3 GB CUDA
# build; then `pip install -e . --no-build-isolation` (Python packages), and the extension
# invflow._C is compiled by the incremental `setup.py build_ext --inplace` below.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
WHEELS ?= /opt/wheels
FIND_LINKS := $(if $(wildcard $(WHEELS)/torch-*),--find-links $(WHEELS))
STAMP := $(VENV)/.invflow-installed
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' 2>/dev/null)
FMNIST_DIR := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=

.PHONY: all setup build cuda-check gpu-check gpu-check-dry test lint demo bench bench-density data clean

all: test

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml setup.py | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(FIND_LINKS) "torch==$(TORCH_VERSION)"
	$(PY) -m pip install $(FIND_LINKS) "setuptools>=77" wheel ninja
	INVFLOW_SKIP_EXT=1 $(PY) -m pip install $(FIND_LINKS) -e ".[test,data]" --no-build-isolation
	touch $@

setup: $(STAMP)

# Compiles invflow._C, and recompiles what changed when a C++/CUDA source is edited.
invflow/.build-stamp: $(STAMP) $(CSRC) setup.py
	$(PY) setup.py -q build_ext --inplace
	touch $@

build: invflow/.build-stamp

# nvcc compile check of every csrc/cuda/*.cu against the installed torch headers (no GPU
# needed); reruns only when a CUDA or shared header changes.
CUDA_SRC := $(wildcard csrc/cuda/*.cu csrc/cuda/*.cuh csrc/common/*.h csrc/ops.h)
build/.cuda-check: $(CUDA_SRC) tools/cuda_compile_check.sh | $(STAMP)
	PY=$(PY) tools/cuda_compile_check.sh
	@mkdir -p build && touch $@

cuda-check: build/.cuda-check

# The GPU check runs on a machine with torch and CUDA already installed (no venv, no network):
# it builds the extension there itself.  DRY_RUN=1 runs the CPU-runnable parts here.
# GPU_CHECK_BUDGET_S, GPU_CHECK_MIN_CUDA_TESTS, STAGES and SANITIZERS pass through the
# environment (or the make command line) to tools/gpu_check.sh.
GPU_CHECK_OUT ?= build/gpu-check
GPU_PY ?= python3
DRY_RUN ?=

gpu-check:
ifeq ($(DRY_RUN),)
	PY=$(GPU_PY) tools/gpu_check.sh $(GPU_CHECK_OUT)
else
	$(MAKE) gpu-check-dry
endif

gpu-check-dry: build
	DRY_RUN=1 PY=$(PY) tools/gpu_check.sh build/gpu-check-dry

test: build cuda-check data gpu-check-dry
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

DEMO_OUT ?= runs/demo

demo: build data
	$(PY) -m detectors demo --out $(DEMO_OUT)

# glibc: serve buffers up to 32 MiB from the heap and never trim it, so freed buffers are
# reused instead of re-faulted page by page (first-touch faults dominate on these VMs).
BENCH_ENV ?= MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=68719476736
BENCH_JSON ?= bench/results-cpu.json

COMPARE_JSON ?= bench/compare-cpu.json
COMPARE_ARGS ?= --quick

# peers for bench/compare.py (bench-only extras; --no-deps keeps the pinned torch)
$(VENV)/.bench-peers: | $(STAMP)
	$(PY) -m pip install $(FIND_LINKS) --no-deps "FrEIA>=0.2" "normflows>=1.7" "zuko>=1.6" "nflows>=0.14"
	touch $@

# density estimation against zuko, nflows, normflows and FrEIA (resumable; bench/README.md)
bench-density: build $(VENV)/.bench-peers
	$(BENCH_ENV) $(PY) bench/density.py --json bench/density-cpu.json --resume

bench: build $(VENV)/.bench-peers
	$(BENCH_ENV) $(PY) -m pytest -q bench --benchmark-only --benchmark-columns=median,iqr,rounds \
		--benchmark-sort=name --benchmark-json=$(BENCH_JSON)
	$(PY) bench/ratios.py $(BENCH_JSON)
	$(BENCH_ENV) $(PY) bench/compare.py $(COMPARE_ARGS) --json $(COMPARE_JSON)

# Installs the Debian data packages where it can (as root, or with password-less sudo); without
# them, `make test` still passes: the tests that need a missing dataset skip with the loader's
# one-line reason (tests/conftest.py).
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $(1); \
	elif sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq $(1); \
	else false; fi || echo "make data: could not install $(1) (needs root and the Debian archive); the tests that need it will skip"

data:
	@if [ -d $(FMNIST_DIR) ]; then echo "Fashion-MNIST present in $(FMNIST_DIR)"; \
	else $(call APT_INSTALL,dataset-fashion-mnist); fi
	@# the general distribution's wallpaper photographs (detectors.data.photos)
	@if [ -f /usr/share/backgrounds/mate/nature/Aqua.jpg ] && [ -f /usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg ]; \
	then echo "wallpaper photos present in /usr/share/backgrounds"; \
	else $(call APT_INSTALL,mate-backgrounds lomiri-wallpapers-16.04); fi

clean:
	rm -rf build invflow/_C*.so invflow/.build-stamp *.egg-info
