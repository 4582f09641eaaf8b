"""FOCUS compute kernels: importance scoring and select + enforce, each with a PyTorch reference.

``backend`` is ``"triton"``, ``"torch"`` (vectorised PyTorch, ``batched.py``), ``"reference"`` (the per-request
loops of ``reference.py``, the specification) or ``None``: Triton for CUDA tensors, vectorised PyTorch otherwise.
Importing this package needs Triton installed but no GPU.
"""

import torch

from .batched import importance_batched, select_enforce_batched
from .importance import importance_triton
from .reference import (
    Budget,
    average_decoded,
    budget_targets,
    importance_reference,
    rightmost_kept,
    select_enforce_reference,
)
from .select_enforce import select_enforce_triton

__all__ = [
    "Budget",
    "average_decoded",
    "budget_targets",
    "importance",
    "resolve_backend",
    "rightmost_kept",
    "select_enforce",
]

BACKENDS = ("triton", "torch", "reference")


def resolve_backend(backend: str | None, tensor: torch.Tensor) -> str:
    """``backend`` if given (validated), else ``"triton"`` for CUDA tensors and ``"torch"`` otherwise."""
    if backend is None:
        return "triton" if tensor.is_cuda else "torch"
    assert backend in BACKENDS, f"backend must be one of {BACKENDS} or None, got {backend!r}"
    return backend


def importance(
    q: torch.Tensor,
    k: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    sm_scale: float,
    max_m: int,
    backend: str | None = None,
) -> torch.Tensor:
    """Per-candidate importance ``I[total_m]`` fp32 (FOCUS_SPEC §4.3); see ``importance_reference``.

    q ``[total_m, H, d]``, k ``[total_m, H_kv, d]``, cu_seqlens int32 ``[R + 1]``; ``max_m`` bounds every
    request's candidate count (at most 128).
    """
    if resolve_backend(backend, q) == "triton":
        return importance_triton(q, k, cu_seqlens, sm_scale=sm_scale, max_m=max_m)
    if resolve_backend(backend, q) == "torch":
        return importance_batched(q, k, cu_seqlens, sm_scale=sm_scale, max_m=max_m)
    return importance_reference(q, k, cu_seqlens, sm_scale=sm_scale)


def select_enforce(
    delta: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    target: torch.Tensor,
    evict: torch.Tensor,
    progress: torch.Tensor,
    *,
    max_m: int,
    backend: str | None = None,
) -> torch.Tensor:
    """Keep mask ``bool[total_m]`` over the candidates (FOCUS_SPEC §4.6–4.7); see ``select_enforce_reference``.

    delta ``[total_m]`` float (``I1 − I0``), positions ``[total_m]`` int, cu_seqlens int32 ``[R + 1]``,
    target ``[R]`` int, evict ``[R]`` bool, progress ``[R]`` int; ``max_m`` bounds every request's candidate count.
    """
    if resolve_backend(backend, delta) == "triton":
        return select_enforce_triton(delta, positions, cu_seqlens, target, evict, progress, max_m=max_m)
    if resolve_backend(backend, delta) == "torch":
        return select_enforce_batched(delta, positions, cu_seqlens, target, evict, progress, max_m=max_m)
    return select_enforce_reference(delta, positions, cu_seqlens, target, evict, progress)
