"""Layer-0/1 importance, the delta, selection, and the rows kept for layers 2..L (spec §4.3–4.8)."""

from __future__ import annotations

import torch

from sglang_focus import kernels
from sglang_focus.structs import EvictionInput, RetainPlan


def candidate_importance(q: torch.Tensor, k: torch.Tensor, inp: EvictionInput, *, num_heads: int,
                         num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """fp32 importance [total_m] of the masked candidates from post-RoPE q [n, H·d] and k [n, H_kv·d].

    Under attention TP, `H`/`H_kv` are this rank's heads and the result is its part of the sum over heads;
    `forward.tensor_parallel.all_heads_importance` adds the other ranks' parts."""
    q_c = q.view(-1, num_heads, head_dim).index_select(0, inp.cand_rows)
    k_c = k.view(-1, num_kv_heads, head_dim).index_select(0, inp.cand_rows)
    return kernels.importance(q_c, k_c, inp.cand_cu, sm_scale=head_dim ** -0.5, max_m=inp.max_m)


def plan_retention(delta: torch.Tensor, inp: EvictionInput) -> RetainPlan:
    """Keep every non-mask row, and the candidates select_enforce keeps; recount rows and windows.

    The kept rows, their counts and windows are derived from the host keep mask (`select_keep_mask`, the step's
    one host synchronisation) and the plan's host tensors; only the kept row indices go back.
    """
    return plan_from_keep_mask(select_keep_mask(delta, inp), inp, device=delta.device)


def select_keep_mask(delta: torch.Tensor, inp: EvictionInput) -> torch.Tensor:
    """[n] bool (host) over the processing rows: every non-mask row, and the candidates select_enforce keeps for
    the candidates' importance `delta` [total_m]. Copies the candidates' keep mask to the host (one sync)."""
    keep_candidates = kernels.select_enforce(delta, inp.cand_pos, inp.cand_cu, inp.target, inp.evict,
                                             inp.progress, max_m=inp.max_m).cpu()
    keep = torch.ones(inp.row_req.shape[0], dtype=torch.bool)
    keep[inp.cand_rows_cpu] = keep_candidates
    return keep


def plan_from_keep_mask(keep: torch.Tensor, inp: EvictionInput, *, device: torch.device) -> RetainPlan:
    """`keep` [n] bool (host) over the processing rows → RetainPlan (kept_rows uploaded to `device`)."""
    kept_rows = torch.nonzero(keep).squeeze(1)
    bs = inp.prefix_lens.shape[0]
    kept_req = inp.row_req[kept_rows]
    rightmost = torch.full((bs,), -1, dtype=torch.int64)
    rightmost.scatter_reduce_(0, kept_req, inp.row_pos[kept_rows], reduce="amax")
    return RetainPlan(kept_rows=kept_rows.to(device), kept_counts=torch.bincount(kept_req, minlength=bs),
                      rightmost=rightmost, window=inp.prefix_lens + rightmost + 1)
