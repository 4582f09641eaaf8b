"""Kernel tests: natively on a GPU, under the Triton interpreter on CPU.

Triton reads ``TRITON_INTERPRET`` when ``@triton.jit`` decorates a kernel, that is when ``sglang_focus.kernels`` is
first imported, so it is set here before any test module imports the package.
"""

import importlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# In an uninstalled checkout (a GPU machine with torch and Triton but no SGLang, `make gpu-bench`), the top-level
# kernels/ is registered as sglang_focus.kernels, as the installed package maps it.
try:
    importlib.import_module("sglang_focus.kernels")
except ModuleNotFoundError as missing:
    if missing.name != "sglang_focus.kernels":
        raise
    from sglang_focus.bench.kernels import import_kernels

    import_kernels()


@pytest.fixture
def device() -> str:
    """Device for the tensors of a test; fails clearly if the CPU run cannot interpret the Triton kernels."""
    if DEVICE == "cpu":
        from triton.runtime.interpreter import InterpretedFunction

        # The package's ``importance`` attribute is the API function; the module is reached by its dotted name.
        kernel_module = importlib.import_module("sglang_focus.kernels.importance")
        if not isinstance(kernel_module._importance_kernel, InterpretedFunction):
            pytest.fail("sglang_focus.kernels was imported before TRITON_INTERPRET=1 was set; set it for the run")
    return DEVICE

