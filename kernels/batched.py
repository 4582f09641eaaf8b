"""Vectorised PyTorch versions of the FOCUS kernels: the CPU runtime path, with no Python loop over requests.

Same contracts as ``reference.py`` (ragged candidates, request ``r`` owning ``cu_seqlens[r]:cu_seqlens[r + 1]``), but
every request is padded to ``max_m`` candidates and processed in one batch of tensor operations. Results equal the
references up to fp32 summation order (tests: ``tests/kernels/test_batched_kernels.py``).
"""

from typing import NamedTuple

import torch

from .reference import check_ragged, list_max_pool3

SCORE_CHUNK_ELEMENTS = 1 << 18  # fp32 scores per importance chunk (1 MiB)


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
    """``importance_reference`` for a whole batch: fp32 ``I[total_m]``.

    Requests go in chunks whose [H, M, M] score tiles total about ``SCORE_CHUNK_ELEMENTS`` floats, so the several
    passes over the scores stay in cache (one chunk for a small model's whole batch; a few requests for SDAR-8B).
    """
    num_req = check_ragged(cu_seqlens)
    if q.shape[0] == 0:
        return torch.zeros(0, dtype=torch.float32, device=q.device)
    per_request = q.shape[1] * max(max_m, 1) ** 2
    chunk = max(1, SCORE_CHUNK_ELEMENTS // per_request)
    bounds = cu_seqlens.tolist()
    parts = []
    for first in range(0, num_req, chunk):
        last = min(first + chunk, num_req)
        if bounds[last] == bounds[first]:
            continue  # only empty requests
        rows = slice(bounds[first], bounds[last])
        parts.append(_importance_padded(q[rows], k[rows], cu_seqlens[first:last + 1] - bounds[first],
                                        sm_scale=sm_scale, max_m=max_m))
    return torch.cat(parts)


def _importance_padded(q, k, cu_seqlens, *, sm_scale: float, max_m: int) -> torch.Tensor:
    pad = padding(cu_seqlens, max_m)
    num_req, width = pad.valid.shape
    heads, kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
    group = heads // kv_heads
    flat = pad.index.reshape(-1)
    # Query heads of one KV head side by side: [R, H_kv, group·M, d] against keys [R, H_kv, d, M], no repeat of k.
    q_pad = q.index_select(0, flat).float().view(num_req, width, kv_heads, group, head_dim)
    q_pad = q_pad.permute(0, 2, 3, 1, 4).reshape(num_req, kv_heads, group * width, head_dim)
    k_pad = k.index_select(0, flat).float().view(num_req, width, kv_heads, head_dim).permute(0, 2, 3, 1)
    key_bias = torch.zeros(num_req, 1, 1, width, device=q.device)
    key_bias.masked_fill_(~pad.valid[:, None, None, :], float("-inf"))
    scores = torch.matmul(q_pad, k_pad).mul_(sm_scale).add_(key_bias)
    pooled = list_max_pool3(scores).add_(key_bias)  # a pad key must not inherit its neighbour's score
    weights = torch.softmax(pooled, dim=-1).view(num_req, kv_heads, group, width, width).sum(dim=(1, 2))
    weights = torch.where(pad.valid[:, :, None] & pad.valid[:, None, :], weights, torch.zeros_like(weights))
    return weights.sum(dim=1)[pad.valid]


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
