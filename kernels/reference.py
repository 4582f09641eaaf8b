"""PyTorch references for the FOCUS kernels: the specification and the CPU runtime path.

Ragged layout: the masked candidates of all requests are stored back to back, request ``r`` owning the rows
``cu_seqlens[r]:cu_seqlens[r + 1]`` in ascending block position. A request may own zero rows.
"""

from typing import NamedTuple

import torch

POOL_WIDTH = 3  # max-pool window over neighbouring keys in the candidate list (FOCUS_SPEC §4.3)


class Budget(NamedTuple):
    target: torch.Tensor  # [R] int, same dtype as num_masked: minimum number of candidates to keep
    evict: torch.Tensor  # [R] bool: the request evicts this step


def check_ragged(cu_seqlens: torch.Tensor) -> int:
    """Validate the shape and dtype of ``cu_seqlens`` (int32 ``[R + 1]``, non-decreasing from 0); return ``R``."""
    assert cu_seqlens.dim() == 1 and cu_seqlens.numel() >= 1, "cu_seqlens must be [R + 1]"
    assert cu_seqlens.dtype == torch.int32, f"cu_seqlens must be int32, got {cu_seqlens.dtype}"
    return cu_seqlens.numel() - 1


def importance_reference(
    q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor, *, sm_scale: float
) -> torch.Tensor:
    """Per-candidate importance ``I[total_m]`` fp32 (FOCUS_SPEC §4.3), computed in fp32 whatever the input dtype.

    q: ``[total_m, H, d]``, k: ``[total_m, H_kv, d]`` with ``H % H_kv == 0``; query head ``h`` reads KV head
    ``h // (H // H_kv)``. Per request and head: scores ``q kᵀ · sm_scale`` over the request's rows, width-3 max-pool
    along the key axis between neighbours in the list (−inf outside), softmax over keys, then the sum over heads and
    queries. Each request's importances therefore sum to ``H · m``.
    """
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] and q.shape[2] == k.shape[2]
    assert q.shape[1] % k.shape[1] == 0, "H must be a multiple of H_kv"
    check_ragged(cu_seqlens)
    group = q.shape[1] // k.shape[1]
    out = torch.zeros(q.shape[0], dtype=torch.float32, device=q.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end > start:
            out[start:end] = _importance_one(q[start:end].float(), k[start:end].float(), group, sm_scale)
    return out


def _importance_one(q: torch.Tensor, k: torch.Tensor, group: int, sm_scale: float) -> torch.Tensor:
    """q ``[m, H, d]``, k ``[m, H_kv, d]`` fp32 → importance ``[m]`` fp32."""
    k = k.repeat_interleave(group, dim=1)  # [m, H, d]
    scores = torch.einsum("ahd,bhd->hab", q, k) * sm_scale  # [H, m(query), m(key)]
    weights = torch.softmax(list_max_pool3(scores), dim=-1)  # [H, m, m]
    return weights.sum(dim=(0, 1))


def list_max_pool3(scores: torch.Tensor) -> torch.Tensor:
    """Width-3, stride-1 max-pool over the last axis with −inf padding (list neighbours, not block positions)."""
    pad = torch.full_like(scores[..., :1], float("-inf"))
    left = torch.cat([pad, scores[..., :-1]], dim=-1)  # value of key b - 1
    right = torch.cat([scores[..., 1:], pad], dim=-1)  # value of key b + 1
    return torch.maximum(torch.maximum(left, scores), right)


def average_decoded(unmasked: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``avg_r = S_r / N_r`` if ``N_r > 0`` else 1.0, float64 ``[R]`` (FOCUS_SPEC §4.5)."""
    unmasked = torch.as_tensor(unmasked, dtype=torch.float64)
    steps = torch.as_tensor(steps, dtype=torch.float64, device=unmasked.device)
    return torch.where(steps > 0, unmasked / steps.clamp(min=1.0), torch.ones_like(unmasked))


def budget_targets(num_masked, avg_decoded, alpha) -> Budget:
    """Per-request keep target and eviction flag (FOCUS_SPEC §4.5), vectorised.

    ``target = 0`` if ``m <= 0`` else ``min(m, max(1, ceil(alpha * max(1, avg))))``; ``evict = target > 0 and
    m > target``. ``alpha`` is a scalar or a per-request tensor, ``inf`` meaning no eviction. The product is
    taken in float64, as Python's ``math.ceil(alpha * avg)`` would.
    """
    m = torch.as_tensor(num_masked)
    assert not m.is_floating_point(), "num_masked must be an integer tensor"
    avg = torch.as_tensor(avg_decoded, dtype=torch.float64, device=m.device)
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=m.device)
    wanted = torch.ceil(alpha * avg.clamp(min=1.0)).clamp(min=1.0)
    capped = torch.minimum(wanted, m.to(torch.float64))
    target = torch.where(m > 0, capped, torch.zeros_like(capped)).to(m.dtype)
    return Budget(target=target, evict=(target > 0) & (m > target))


def select_enforce_reference(
    delta: torch.Tensor,
    positions: torch.Tensor,
    cu_seqlens: torch.Tensor,
    target: torch.Tensor,
    evict: torch.Tensor,
    progress: torch.Tensor,
) -> torch.Tensor:
    """Keep mask ``bool[total_m]`` over the candidates (FOCUS_SPEC §4.6–4.7).

    delta ``[total_m]`` float (``I1 − I0``), positions ``[total_m]`` int (block positions, strictly ascending per
    request), target/evict/progress ``[R]`` (int, bool, int; progress is −1 at block start). Requests with
    ``evict`` false keep every candidate.
    """
    total = delta.shape[0]
    assert positions.shape == (total,), "positions must be [total_m]"
    num_req = check_ragged(cu_seqlens)
    assert target.shape == evict.shape == progress.shape == (num_req,), "target/evict/progress must be [R]"
    keep = torch.ones(total, dtype=torch.bool, device=delta.device)
    bounds = cu_seqlens.tolist()
    for r, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if end > start and bool(evict[r]):
            keep[start:end] = _select_one(
                delta[start:end].float(), positions[start:end].long(), int(target[r]), int(progress[r])
            )
    return keep


def _select_one(delta: torch.Tensor, pos: torch.Tensor, target: int, prog: int) -> torch.Tensor:
    """One evicting request with ``m >= 1`` candidates → keep ``bool[m]``."""
    m = delta.numel()
    t = min(max(target, 1), m)
    mu = delta.sum() / m
    sigma = (((delta - mu) ** 2).sum() / m).sqrt()  # population std
    kept = delta >= mu + sigma  # 1-sigma set C
    order = torch.sort(delta, descending=True, stable=True).indices  # stable: ties go to the lower index
    kept[order[:t]] = True  # K0 = C ∪ top_t(δ), the same as "C if |C| >= t else top_t"
    kept = _keep_left_neighbours(kept, pos)
    if not kept.any():
        kept[:] = True
    right = pos[kept].max()
    return kept | ((pos > prog) & (pos < right))


def _keep_left_neighbours(kept: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rule 1, one non-transitive pass: also keep ``b`` if ``b + 1`` is kept and sits at ``pos[b] + 1``."""
    out = kept.clone()
    out[:-1] |= kept[1:] & (pos[1:] == pos[:-1] + 1)
    return out


def rightmost_kept(keep: torch.Tensor, positions: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Per request, the largest kept block position, or −1 if none is kept; ``[R]`` in the dtype of positions.

    The caller still has to fold in the non-mask rows: ``prog ← max(prog, this, max non-mask position)``.
    """
    num_req = check_ragged(cu_seqlens)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    owner = torch.repeat_interleave(
        torch.arange(num_req, device=keep.device), lengths, output_size=keep.shape[0]
    )  # [total_m] request index of each row
    values = torch.where(keep, positions.long(), torch.full_like(positions, -1, dtype=torch.long))
    out = torch.full((num_req,), -1, dtype=torch.long, device=keep.device)
    return out.scatter_reduce(0, owner, values, reduce="amax", include_self=True).to(positions.dtype)
