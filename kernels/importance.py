"""Triton importance kernel (FOCUS_SPEC §4.3, §6.1): scores, list max-pool, softmax and column sum, in fp32.

One program per (request, query head) holds the request's whole ``[m, m]`` score tile in registers and writes that
head's column sums to a ``[H, total_m]`` buffer; the heads are then summed by one fixed-order reduction. No atomics,
so the result is bitwise reproducible (FOCUS_SPEC §9.2).
"""

import torch
import triton
import triton.language as tl

from .launch import importance_launch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _load_rows(base, rows, m, stride_m, dims, dim_ok):
    """Rows ``rows`` (``[BLOCK_M]`` int64, may lie outside ``[0, m)``) of a ``[m, d]`` view → ``[BLOCK_M, BLOCK_D]``
    fp32, zero where out of range. The upcast happens before any arithmetic (bf16 and fp16 inputs)."""
    row_ok = (rows >= 0) & (rows < m)
    ptrs = base + rows[:, None] * stride_m + dims[None, :]
    return tl.load(ptrs, mask=row_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32)


@triton.jit
def _shifted_scores(q_base, k_base, stride_qm, stride_km, idx, m, head_dim,
                    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Raw ``q[a] · k[b + o]`` for ``o = -1, 0, +1``: three ``[BLOCK_M, BLOCK_M]`` fp32 tiles (0 where ``b + o`` is
    outside the list). The neighbours are recomputed from shifted key loads instead of shifting registers."""
    acc_left = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    acc_mid = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    acc_right = tl.zeros((BLOCK_M, BLOCK_M), dtype=tl.float32)
    for d0 in range(0, head_dim, BLOCK_D):
        dims = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
        dim_ok = dims < head_dim
        q = _load_rows(q_base, idx, m, stride_qm, dims, dim_ok)  # [BLOCK_M, BLOCK_D]
        k_left = _load_rows(k_base, idx - 1, m, stride_km, dims, dim_ok)  # key b - 1 in column b
        k_mid = _load_rows(k_base, idx, m, stride_km, dims, dim_ok)
        k_right = _load_rows(k_base, idx + 1, m, stride_km, dims, dim_ok)  # key b + 1 in column b
        acc_left += tl.dot(q, tl.trans(k_left), input_precision="ieee")
        acc_mid += tl.dot(q, tl.trans(k_mid), input_precision="ieee")
        acc_right += tl.dot(q, tl.trans(k_right), input_precision="ieee")
    return acc_left, acc_mid, acc_right


@triton.jit
def _pooled_softmax_colsum(left, mid, right, idx, m, sm_scale):
    """Pool the three shifted tiles (−inf outside the list), softmax each valid query row over keys, and sum the
    rows: ``[BLOCK_M]`` fp32 importance contribution of one head."""
    neg_inf = float("-inf")
    col = idx[None, :]  # [1, BLOCK_M] key index b
    left = tl.where(col >= 1, left, neg_inf)
    right = tl.where(col + 1 < m, right, neg_inf)
    pooled = tl.maximum(tl.maximum(left, mid), right) * sm_scale  # sm_scale > 0 commutes with max
    pooled = tl.where(col < m, pooled, neg_inf)  # [BLOCK_M, BLOCK_M]
    row_ok = idx < m  # [BLOCK_M] query index a
    row_max = tl.where(row_ok, tl.max(pooled, axis=1), 0.0)  # finite even when m == 0
    p = tl.exp(pooled - row_max[:, None])
    denom = tl.where(row_ok, tl.sum(p, axis=1), 1.0)  # >= 1 on valid rows; 0 only on rows of an empty request
    w = p / denom[:, None]
    return tl.sum(tl.where(row_ok[:, None], w, 0.0), axis=0)


@triton.jit
def _importance_kernel(
    q_ptr,  # [total_m, H, d], any float dtype
    k_ptr,  # [total_m, H_kv, d]
    cu_ptr,  # [R + 1] int32
    out_ptr,  # [H, total_m] fp32, per-head importances
    stride_qm, stride_qh, stride_km, stride_kh, stride_oh,
    sm_scale, head_dim,
    GROUP: tl.constexpr,  # H // H_kv
    BLOCK_M: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    req = tl.program_id(0)
    head = tl.program_id(1)
    start = tl.load(cu_ptr + req).to(tl.int64)
    m = tl.load(cu_ptr + req + 1).to(tl.int64) - start
    idx = tl.arange(0, BLOCK_M).to(tl.int64)  # [BLOCK_M] list index within the request
    q_base = q_ptr + start * stride_qm + head.to(tl.int64) * stride_qh
    k_base = k_ptr + start * stride_km + (head // GROUP).to(tl.int64) * stride_kh
    left, mid, right = _shifted_scores(q_base, k_base, stride_qm, stride_km, idx, m, head_dim, BLOCK_M, BLOCK_D)
    contribution = _pooled_softmax_colsum(left, mid, right, idx, m, sm_scale)  # [BLOCK_M]
    out = out_ptr + head.to(tl.int64) * stride_oh + start + idx
    tl.store(out, contribution, mask=idx < m)


def importance_triton(
    q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, *, sm_scale: float, max_m: int
) -> torch.Tensor:
    """Triton version of ``importance_reference``; returns ``I[total_m]`` fp32.

    q ``[total_m, H, d]`` and k ``[total_m, H_kv, d]`` (fp16/bf16/fp32, unit stride on ``d``), cu_seqlens int32
    ``[R + 1]`` on the same device, ending at ``total_m``. ``max_m`` (``<= 128``) must bound every request's
    candidate count; rows of a longer request would be left unwritten. No host synchronisation.
    """
    assert q.dim() == 3 and k.dim() == 3, "q and k must be [total_m, heads, head_dim]"
    total_m, num_heads, head_dim = q.shape
    assert k.shape[0] == total_m and k.shape[2] == head_dim, f"k {tuple(k.shape)} does not match q {tuple(q.shape)}"
    assert num_heads % k.shape[1] == 0, "H must be a multiple of H_kv"
    assert q.dtype in _FLOAT_DTYPES and k.dtype in _FLOAT_DTYPES, f"unsupported dtypes {q.dtype}, {k.dtype}"
    assert q.stride(2) == 1 and k.stride(2) == 1, "head_dim must be contiguous"
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1 and cu_seqlens.is_contiguous()
    assert q.device == k.device == cu_seqlens.device, "q, k and cu_seqlens must share a device"
    assert sm_scale > 0, "sm_scale must be positive (the pool is applied before scaling)"
    launch = importance_launch(max_m, head_dim)
    num_req = cu_seqlens.numel() - 1
    if num_req == 0 or total_m == 0:
        return torch.zeros(total_m, dtype=torch.float32, device=q.device)
    per_head = torch.empty((num_heads, total_m), dtype=torch.float32, device=q.device)
    _importance_kernel[(num_req, num_heads)](
        q, k, cu_seqlens, per_head,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), per_head.stride(0),
        float(sm_scale), head_dim,
        GROUP=num_heads // k.shape[1], BLOCK_M=launch.block_m, BLOCK_D=launch.block_d,
        num_warps=launch.num_warps,
    )
    return per_head.sum(dim=0)
