"""Public API of sglang_focus.kernels: backend choice and validation."""

import pytest
import torch

from sglang_focus.kernels import importance, resolve_backend


def test_default_backend_follows_the_device():
    assert resolve_backend(None, torch.zeros(1)) == "torch"
    if torch.cuda.is_available():
        assert resolve_backend(None, torch.zeros(1, device="cuda")) == "triton"


def test_explicit_backend_wins_and_unknown_names_are_refused():
    assert resolve_backend("triton", torch.zeros(1)) == "triton"
    assert resolve_backend("torch", torch.zeros(1)) == "torch"
    with pytest.raises(AssertionError):
        resolve_backend("cuda", torch.zeros(1))


def test_triton_wrapper_refuses_int64_offsets(device):
    q = torch.randn(2, 2, 16, device=device)
    with pytest.raises(AssertionError):
        importance(q, q, torch.tensor([0, 2], device=device), sm_scale=1.0, max_m=2, backend="triton")
