"""Triton select + enforce kernel (FOCUS_SPEC §4.6–4.7, §6.2): one program per request, all in registers.

The program loads the request's ``δ`` and positions once, builds ``K0 = C ∪ top_t(δ)``, applies the left-neighbour,
non-empty and gap-fill rules without touching global memory in between (FOCUS_SPEC §9.3), and stores the keep mask.
"""

import torch
import triton
import triton.language as tl

from .launch import select_launch


@triton.jit
def _initial_keep(delta, valid, idx, m, t):
    """``K0 = C ∪ top_t(δ)`` as ``[BLOCK_M]`` bool. ``C`` is the 1σ set (population σ); ``top_t`` ranks by ``δ``
    descending, ties to the lower list index, through a ``[BLOCK_M, BLOCK_M]`` comparison."""
    count = tl.maximum(m, 1).to(tl.float32)
    mean = tl.div_rn(tl.sum(tl.where(valid, delta, 0.0), axis=0), count)
    centred = tl.where(valid, delta - mean, 0.0)
    sigma = tl.sqrt_rn(tl.div_rn(tl.sum(centred * centred, axis=0), count))
    in_sigma_set = valid & (delta >= mean + sigma)
    d_i = delta[:, None]  # [BLOCK_M, 1] the ranked element
    d_j = delta[None, :]  # [1, BLOCK_M] the elements it is compared with
    ahead = (d_j > d_i) | ((d_j == d_i) & (idx[None, :] < idx[:, None]))
    rank = tl.sum(tl.where(ahead & valid[None, :], 1, 0), axis=1)  # [BLOCK_M] elements ranked before i
    return in_sigma_set | (valid & (rank < t))


@triton.jit
def _add_left_neighbours(kept, pos, idx):
    """Rule 1, one non-transitive pass: keep ``b`` if ``b + 1`` is in ``kept`` and ``pos[b + 1] == pos[b] + 1``.
    The shift by one list slot is a one-hot ``[BLOCK_M, BLOCK_M]`` reduction in registers."""
    is_next = (idx[None, :] == idx[:, None] + 1) & (pos[None, :] == pos[:, None] + 1)
    right_kept = tl.max(tl.where(is_next & kept[None, :], 1, 0), axis=1) > 0  # [BLOCK_M]
    return kept | right_kept


@triton.jit
def _select_enforce_kernel(
    delta_ptr,  # [total_m] float
    pos_ptr,  # [total_m] int32/int64, block positions, ascending per request
    cu_ptr,  # [R + 1] int32
    target_ptr,  # [R] int
    evict_ptr,  # [R] int8 (0/1)
    prog_ptr,  # [R] int, rightmost processed block position (−1 at block start)
    keep_ptr,  # [total_m] int8 (0/1), out
    BLOCK_M: tl.constexpr,
):
    req = tl.program_id(0)
    start = tl.load(cu_ptr + req).to(tl.int64)
    m = tl.load(cu_ptr + req + 1).to(tl.int64) - start
    idx = tl.arange(0, BLOCK_M).to(tl.int64)  # [BLOCK_M] list index within the request
    valid = idx < m
    delta = tl.load(delta_ptr + start + idx, mask=valid, other=0.0).to(tl.float32)
    pos = tl.load(pos_ptr + start + idx, mask=valid, other=-1).to(tl.int64)
    t = tl.minimum(tl.maximum(tl.load(target_ptr + req).to(tl.int64), 1), m)
    kept = _add_left_neighbours(_initial_keep(delta, valid, idx, m, t), pos, idx)
    kept = kept | (valid & (tl.sum(kept.to(tl.int32), axis=0) == 0))  # rule 2: never empty
    rightmost = tl.max(tl.where(kept, pos, -1), axis=0)
    prog = tl.load(prog_ptr + req).to(tl.int64)
    kept = kept | (valid & (pos > prog) & (pos < rightmost))  # rule 3: gap fill
    evict = tl.load(evict_ptr + req) != 0
    kept = tl.where(evict, kept, valid)
    tl.store(keep_ptr + start + idx, kept.to(tl.int8), mask=valid)


def select_enforce_triton(
    delta: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    target: torch.Tensor,
    evict: torch.Tensor,
    progress: torch.Tensor,
    *,
    max_m: int,
) -> torch.Tensor:
    """Triton version of ``select_enforce_reference``; returns the keep mask ``bool[total_m]``.

    delta ``[total_m]`` float, positions ``[total_m]`` int, cu_seqlens int32 ``[R + 1]``, target ``[R]`` int,
    evict ``[R]`` bool, progress ``[R]`` int, all on one device. ``max_m`` (``<= 128``) must bound every
    request's candidate count. No host synchronisation.
    """
    total_m = delta.shape[0]
    num_req = cu_seqlens.numel() - 1
    assert delta.dim() == 1 and delta.is_floating_point(), "delta must be a float [total_m]"
    assert positions.shape == (total_m,) and not positions.is_floating_point(), "positions must be int [total_m]"
    assert cu_seqlens.dtype == torch.int32 and cu_seqlens.dim() == 1, "cu_seqlens must be int32 [R + 1]"
    assert target.shape == evict.shape == progress.shape == (num_req,), "target/evict/progress must be [R]"
    assert evict.dtype == torch.bool, "evict must be bool"
    tensors = (delta, positions, cu_seqlens, target, evict, progress)
    assert all(x.is_contiguous() and x.device == delta.device for x in tensors), "contiguous, on one device"
    launch = select_launch(max_m)
    keep = torch.empty(total_m, dtype=torch.int8, device=delta.device)
    if num_req == 0 or total_m == 0:
        return keep.view(torch.bool)
    _select_enforce_kernel[(num_req,)](
        delta, positions, cu_seqlens, target, evict.view(torch.int8), progress, keep,
        BLOCK_M=launch.block_m, num_warps=launch.num_warps,
    )
    return keep.view(torch.bool)
