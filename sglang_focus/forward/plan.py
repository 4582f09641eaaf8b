"""Host-side plan of one denoising step: the processing rows and, when some request may evict, its inputs."""

from __future__ import annotations

from typing import NamedTuple

import torch

from sglang_focus import kernels
from sglang_focus.structs import EvictionInput, FocusReqState
from sglang_focus.unmasking.delayed_cache import processing_positions


class StepPlan(NamedTuple):
    positions: list[list[int]]  # per request: block positions processed this step (sorted)
    masked: list[int]  # per request: masked candidates among them
    rows: torch.Tensor  # [n] int64 (device): flat indices into the [bs·B] block rows
    row_counts: torch.Tensor  # [bs] int64 (cpu)
    window: torch.Tensor  # [bs] int64 (cpu): h + max(P) + 1
    processes_everything: bool  # P is every position of every block: the batch can run as SGLang built it
    eviction: EvictionInput | None  # None when no request may evict this step


def plan_step(states: list[FocusReqState], masked: torch.Tensor, prefix_lens: torch.Tensor,
              alphas: list[float], *, delayed_cache: bool, device: torch.device,
              min_batch_tokens: int = 0) -> StepPlan:
    """`masked` [bs, B] bool (cpu) is the block mask before the step; `prefix_lens` [bs] (cpu) the committed h.

    A batch processing fewer than `min_batch_tokens` rows is too small to be compute-bound: no request evicts.
    """
    bs, block = masked.shape
    positions = [processing_positions(s, delayed_cache=delayed_cache) for s in states]
    masked_rows = masked.tolist()
    candidates = [[p for p in pos if masked_rows[r][p]] for r, pos in enumerate(positions)]
    counts = torch.tensor([len(p) for p in positions], dtype=torch.int64)
    window = prefix_lens.to(torch.int64) + torch.tensor([p[-1] + 1 for p in positions], dtype=torch.int64)
    rows = torch.tensor([r * block + p for r, pos in enumerate(positions) for p in pos], dtype=torch.int64)
    worth_evicting = rows.shape[0] >= min_batch_tokens
    return StepPlan(
        positions=positions,
        masked=[len(c) for c in candidates],
        rows=rows.to(device),
        row_counts=counts,
        window=window,
        processes_everything=bool((counts == block).all()),
        eviction=(_eviction_input(states, positions, candidates, masked_rows, prefix_lens, alphas, device)
                  if worth_evicting else None),
    )


def _may_evict(state: FocusReqState, masked_row: list[bool]) -> bool:
    """FOCUS never runs in prefill: the first step of a block that still holds prompt tokens."""
    return not (state.steps == 0 and not all(masked_row))


def _eviction_input(states, positions, candidates, masked_rows, prefix_lens, alphas, device):
    num_masked = torch.tensor([len(c) for c in candidates], dtype=torch.int64)
    averages = kernels.average_decoded(torch.tensor([s.unmasked for s in states], dtype=torch.int64),
                                       torch.tensor([s.decoding_steps for s in states], dtype=torch.int64))
    budget = kernels.budget_targets(num_masked, averages, torch.tensor(alphas, dtype=torch.float64))
    allowed = torch.tensor([_may_evict(s, m) for s, m in zip(states, masked_rows)])
    evict = budget.evict & allowed
    if not bool(evict.any()):
        return None
    row_of = {}
    for r, pos in enumerate(positions):
        for p in pos:
            row_of[(r, p)] = len(row_of)
    cand_rows = [row_of[(r, p)] for r, cands in enumerate(candidates) for p in cands]
    cand_cu = torch.zeros(len(states) + 1, dtype=torch.int32)
    cand_cu[1:] = torch.cumsum(num_masked, 0)
    as_device = lambda values, dtype: torch.tensor(values, dtype=dtype).to(device)  # noqa: E731
    return EvictionInput(
        cand_rows=as_device(cand_rows, torch.int64),
        cand_cu=cand_cu.to(device),
        cand_pos=as_device([p for cands in candidates for p in cands], torch.int32),
        target=budget.target.to(torch.int32).to(device),
        evict=evict.to(device),
        progress=as_device([s.progress for s in states], torch.int32),
        row_req=as_device([r for r, pos in enumerate(positions) for _ in pos], torch.int64),
        row_pos=as_device([p for pos in positions for p in pos], torch.int64),
        prefix_lens=prefix_lens.to(torch.int64).to(device),
        max_m=max(1, int(num_masked.max())),
    )

