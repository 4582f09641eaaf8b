# Quick start: `make demo` and `make test`. Both create the CPU virtual environment first if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sglang-focus-installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: setup demo test test-fast clean-venv

setup: $(STAMP)

# CPU environment: the pinned list with --no-deps (torch 2.13.0 CPU, sglang 0.5.23 without its CUDA dependencies),
# the CPU stand-ins SGLang needs, then this package in editable mode.
$(STAMP): requirements/cpu.txt pyproject.toml cpu_shims/pyproject.toml cpu_shims/sgl_kernel/__init__.py cpu_shims/sglang_focus_cpu_compat/__init__.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "Installing the pinned CPU environment into $(VENV) (first run only, about 2 minutes)..."
	$(PY) -m pip install $(PIP_QUIET) --no-deps -r requirements/cpu.txt
	$(PY) -m pip install $(PIP_QUIET) --no-deps --force-reinstall ./cpu_shims
	$(PY) -m pip install $(PIP_QUIET) --no-deps -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m sglang_focus.demo

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not e2e"

clean-venv:
	rm -rf $(VENV)
