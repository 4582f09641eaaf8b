"""Vectorised PyTorch versions of the FOCUS kernels: the CPU runtime path, with no Python loop over requests.

Same contracts as ``reference.py`` (ragged candidates, request ``r`` owning ``cu_seqlens[r]:cu_seqlens[r + 1]``), but
every request is padded to ``max_m`` candidates and processed in one batch of tensor operations. Results equal the
references up to fp32 summation order (tests: ``tests/kernels/test_batched_kernels.py``).
"""

from typing import NamedTuple

import torch

from .reference import check_ragged, list_max_pool3


class Padding(NamedTuple):
    index: torch.Tensor  # [R, M] int64: flat candidate index of slot (r, j), 0 where invalid
    valid: torch.Tensor  # [R, M] bool: slot j < m_r


def padding(cu_seqlens: torch.Tensor, max_m: int) -> Padding:
    """Padded [R, max_m] layout of the ragged candidates; ``max_m`` must be >= every request's count."""
    starts = cu_seqlens[:-1].long()
    lengths = cu_seqlens[1:].long() - starts
    slots = torch.arange(max(max_m, 1), device=cu_seqlens.device)
    valid = slots.unsqueeze(0) < lengths.unsqueeze(1)
    index = torch.where(valid, starts.unsqueeze(1) + slots.unsqueeze(0), torch.zeros_like(valid, dtype=torch.long))
    return Padding(index=index, valid=valid)


def importance_batched(
    q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, *, sm_scale: float, max_m: int
) -> torch.Tensor:
    """``importance_reference`` for a whole batch at once: fp32 ``I[total_m]``."""
    check_ragged(cu_seqlens)
    total = q.shape[0]
    if total == 0:
        return torch.zeros(0, dtype=torch.float32, device=q.device)
    group = q.shape[1] // k.shape[1]
    pad = padding(cu_seqlens, max_m)
    q_pad = q.float()[pad.index]  # [R, M, H, d]
    k_pad = k.float()[pad.index].repeat_interleave(group, dim=2)  # [R, M, H, d]
    scores = torch.einsum("rahd,rbhd->rhab", q_pad, k_pad) * sm_scale  # [R, H, M(query), M(key)]
    key_valid = pad.valid[:, None, None, :]
    scores = scores.masked_fill(~key_valid, float("-inf"))
    pooled = list_max_pool3(scores).masked_fill(~key_valid, float("-inf"))  # a pad key must not inherit a neighbour
    weights = torch.softmax(pooled, dim=-1)
    weights = torch.where(key_valid & pad.valid[:, None, :, None], weights, torch.zeros_like(weights))
    return weights.sum(dim=(1, 2))[pad.valid]


def select_enforce_batched(
    delta: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    target: torch.Tensor,
    evict: torch.Tensor,
    progress: torch.Tensor,
    *,
    max_m: int,
) -> torch.Tensor:
    """``select_enforce_reference`` for a whole batch at once: keep ``bool[total_m]``."""
    check_ragged(cu_seqlens)
    if delta.shape[0] == 0:
        return torch.ones(0, dtype=torch.bool, device=delta.device)
    pad = padding(cu_seqlens, max_m)
    valid = pad.valid
    m = valid.sum(dim=1, keepdim=True)  # [R, 1]
    d = torch.where(valid, delta.float()[pad.index], torch.zeros((), device=delta.device))
    pos = torch.where(valid, positions.long()[pad.index], torch.full_like(pad.index, -1))
    kept = _top_set(d, valid, m, target.long().unsqueeze(1))
    kept = _keep_left_neighbours(kept, pos, valid)
    kept = torch.where(kept.any(dim=1, keepdim=True), kept, valid)  # rule 2: never empty
    right = torch.where(kept, pos, torch.full_like(pos, -1)).amax(dim=1, keepdim=True)
    kept |= valid & (pos > progress.long().unsqueeze(1)) & (pos < right)  # rule 3: gap fill
    kept = torch.where(evict.unsqueeze(1), kept, valid)
    return kept[valid]


def _top_set(d: torch.Tensor, valid: torch.Tensor, m: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """K0 = 1-sigma set ∪ top_t(δ) per request (population std; ties to the lower index)."""
    count = m.clamp(min=1).to(d.dtype)
    mu = d.sum(dim=1, keepdim=True) / count
    sigma = (torch.where(valid, d - mu, torch.zeros_like(d)) ** 2).sum(dim=1, keepdim=True).div(count).sqrt()
    one_sigma = valid & (d >= mu + sigma)
    t = torch.minimum(target.clamp(min=1), m)
    slots = torch.arange(d.shape[1], device=d.device)
    ahead = (d.unsqueeze(1) > d.unsqueeze(2)) | (  # ahead[r, b, b']: b' ranks before b
        (d.unsqueeze(1) == d.unsqueeze(2)) & (slots.view(1, 1, -1) < slots.view(1, -1, 1)))
    rank = (ahead & valid.unsqueeze(1)).sum(dim=2)  # [R, M]
    return one_sigma | (valid & (rank < t))


def _keep_left_neighbours(kept: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rule 1, one non-transitive pass over [R, M]: keep ``b`` if ``b + 1`` is kept and sits at ``pos[b] + 1``."""
    out = kept.clone()
    out[:, :-1] |= kept[:, 1:] & valid[:, 1:] & (pos[:, 1:] == pos[:, :-1] + 1)
    return out & valid
