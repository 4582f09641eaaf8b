"""Host-side plan of one denoising step: the processing rows and, when some request may evict, its inputs.

Everything here is vectorised over the batch on host tensors ([bs, B] masks); the only per-request Python is
reading the states SGLang hands over. Device tensors are uploaded once, nothing is read back.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sglang_focus import kernels
from sglang_focus.structs import EvictionInput, FocusReqState
from sglang_focus.unmasking.delayed_cache import processing_mask


class StepPlan(NamedTuple):
    process: torch.Tensor  # [bs, B] bool (cpu): block positions processed this step
    masked: torch.Tensor  # [bs] int64 (cpu): masked candidates among them
    rows: torch.Tensor  # [n] int64 (device): flat indices into the [bs·B] block rows, grouped by request, ascending
    row_counts: torch.Tensor  # [bs] int64 (cpu)
    rightmost: torch.Tensor  # [bs] int64 (cpu): max(P), the rightmost processed block position
    window: torch.Tensor  # [bs] int64 (cpu): h + max(P) + 1
    processes_everything: bool  # P is every position of every block: the batch can run as SGLang built it
    eviction: EvictionInput | None  # None when no request may evict this step


def plan_step(states: list[FocusReqState], masked: torch.Tensor, prefix_lens: torch.Tensor,
              alphas: list[float], *, delayed_cache: bool, device: torch.device,
              min_batch_tokens: int = 0, as_stock: list[bool] | None = None) -> StepPlan:
    """`masked` [bs, B] bool (cpu) is the block mask before the step; `prefix_lens` [bs] (cpu) the committed h.

    `as_stock` [bs] marks requests that opted out of FOCUS (`enabled: false`): whatever the others do, such a
    request processes every position of its block every step (no delayed cache) and has no eviction candidate
    (nothing scored, nothing evicted), so it computes what stock SGLang computes for it.

    A batch of fewer than `min_batch_tokens` block rows is memory-bound: the step runs as stock SGLang's does, every
    position of every block and no eviction (see `memory_bound`). Each request's budget average is
    `budget_unmasked / budget_decoding_steps` of its state: this block's S / N, or the request's over all its blocks
    when its state carries the earlier blocks' counters (budget_reset: request).
    """
    bs, block = masked.shape
    steps = torch.tensor([s.steps for s in states], dtype=torch.int64)
    stock_step = memory_bound(bs * block, min_batch_tokens)
    if stock_step:
        process = torch.ones_like(masked)
    else:
        stock_rows = torch.tensor(as_stock if as_stock is not None else [False] * bs, dtype=torch.bool)
        process = processing_mask(torch.tensor([s.uncached for s in states], dtype=torch.bool), steps,
                                  delayed_cache=delayed_cache) | stock_rows.unsqueeze(1)
    flat_rows = torch.nonzero(process.view(-1)).squeeze(1)
    counts = process.sum(dim=1)
    rightmost = block - 1 - torch.argmax(process.flip(1).to(torch.int8), dim=1)
    window = prefix_lens.to(torch.int64) + rightmost + 1
    eviction = None
    if not stock_step:
        eviction = _eviction_input(states, steps, process, masked & ~stock_rows.unsqueeze(1), flat_rows,
                                   prefix_lens, alphas, device)
    return StepPlan(
        process=process,
        masked=(process & masked).sum(dim=1),
        rows=flat_rows.to(device),
        row_counts=counts,
        rightmost=rightmost,
        window=window,
        processes_everything=bool(process.all()),
        eviction=eviction,
    )


def memory_bound(block_rows: int, min_batch_tokens: int) -> bool:
    """The memory-bound guard (spec §12.6) for a batch of `block_rows` = batch size × B block tokens.

    Below `min_batch_tokens` the forward costs about the same whatever its row count, so neither eviction nor the
    delayed cache can save time, while both cost decoding progress (evicted tokens wait; frozen KV of decoded
    tokens lowers the confidences). Such a step processes every block position with no scoring: it computes what
    stock SGLang computes. Always valid: a step that writes every position's KV leaves the delayed-cache and progress
    invariants intact. 0 disables the guard.
    """
    return block_rows < min_batch_tokens


def positions_of(plan: StepPlan) -> list[list[int]]:
    """Per request, the processed block positions (ascending), as Python lists (for tests and debugging)."""
    return [torch.nonzero(row).squeeze(1).tolist() for row in plan.process]


def _eviction_input(states, steps, process, masked, flat_rows, prefix_lens, alphas, device):
    block = process.shape[1]
    candidates = process & masked  # [bs, B]
    num_masked = candidates.sum(dim=1)
    averages = kernels.average_decoded(torch.tensor([s.budget_unmasked for s in states], dtype=torch.int64),
                                       torch.tensor([s.budget_decoding_steps for s in states], dtype=torch.int64))
    budget = kernels.budget_targets(num_masked, averages, torch.tensor(alphas, dtype=torch.float64))
    # FOCUS never runs in prefill: the first step of a block that still holds prompt tokens.
    in_prefill = (steps == 0) & ~masked.all(dim=1)
    evict = budget.evict & ~in_prefill
    if not bool(evict.any()):
        return None
    row_req, row_pos = flat_rows // block, flat_rows % block
    is_candidate = candidates.view(-1)[flat_rows]  # [n] bool, per processing row
    cand_rows = torch.nonzero(is_candidate).squeeze(1)
    cand_cu = torch.zeros(len(states) + 1, dtype=torch.int32)
    cand_cu[1:] = torch.cumsum(num_masked, 0)
    return EvictionInput(
        cand_rows=cand_rows.to(device),
        cand_cu=cand_cu.to(device),
        cand_pos=row_pos[cand_rows].to(torch.int32).to(device),
        target=budget.target.to(torch.int32).to(device),
        evict=evict.to(device),
        evict_cpu=evict,
        progress=torch.tensor([s.progress for s in states], dtype=torch.int32).to(device),
        row_req=row_req,
        row_pos=row_pos,
        cand_rows_cpu=cand_rows,
        prefix_lens=prefix_lens.to(torch.int64),
        max_m=max(1, int(num_masked.max())),
    )
