"""Delayed cache (spec §2): which block positions a step processes, and which become cached after it; the
per-request counters a step advances, and what of them a block switch keeps.

The batch functions work on [bs, B] host tensors; the single-request forms are thin wrappers used by tests.
"""

from __future__ import annotations

import torch

from sglang_focus.structs import FocusReqState


def processing_mask(uncached: torch.Tensor, steps: torch.Tensor, *, delayed_cache: bool) -> torch.Tensor:
    """[bs, B] bool: the positions each request runs this step.

    `uncached` [bs, B] bool, `steps` [bs] int (forwards run on the block so far). A request runs its uncached
    positions, or every position on the block's first step, when none is uncached, or without the delayed cache.
    """
    run_all = (steps == 0) | ~uncached.any(dim=1)
    if not delayed_cache:
        run_all = torch.ones_like(run_all)
    return uncached | run_all.unsqueeze(1)


def processing_positions(state: FocusReqState, *, delayed_cache: bool) -> list[int]:
    """Sorted block positions one request runs this step (see `processing_mask`)."""
    mask = processing_mask(torch.tensor([state.uncached]), torch.tensor([state.steps]), delayed_cache=delayed_cache)
    return torch.nonzero(mask[0]).squeeze(1).tolist()


def ready_to_cache(pre_step_masked: torch.Tensor) -> torch.Tensor:
    """[bs, B] bool: positions whose KV is final after the forward that saw `pre_step_masked` (before its unmasking).

    A position is ready when it was fed a real token and so was its right neighbour (or it is the last one);
    a decoded token whose right neighbour is still a mask stays uncached, and a mask is never cached.
    """
    fed = ~pre_step_masked
    right_fed = torch.ones_like(fed)
    right_fed[:, :-1] = fed[:, 1:]
    return fed & right_fed


def apply_caching_rule(states: list[FocusReqState], pre_step_masked: torch.Tensor) -> None:
    """Clear `uncached` of every ready position, for a whole batch ([bs, B] mask, host)."""
    uncached = torch.tensor([s.uncached for s in states], dtype=torch.bool)
    for state, row in zip(states, (uncached & ~ready_to_cache(pre_step_masked)).tolist()):
        state.uncached = row


def caching_rule(state: FocusReqState, pre_step_masked: list[bool]) -> None:
    """`apply_caching_rule` for one request."""
    apply_caching_rule([state], torch.tensor([pre_step_masked]))


def record_step(state: FocusReqState, *, newly_unmasked: int, rightmost_kept: int) -> None:
    """Advance the budget counters (S, N) and the block progress after a forward."""
    state.steps += 1
    state.unmasked += newly_unmasked
    state.decoding_steps += int(newly_unmasked > 0)
    state.progress = max(state.progress, rightmost_kept)


def next_block_state(state: FocusReqState, *, carry_budget: bool) -> FocusReqState | None:
    """The state a request starts its next block with, once the block of `state` is fully decoded.

    None (SGLang's "no state": the next block starts fresh, spec §4.5) unless `carry_budget` (budget_reset:
    request); then a fresh block state (every position uncached, no steps, progress -1, S = N = 0 for the block)
    whose `earlier_*` counters add this block's S and N to the earlier blocks', so the next block's first budget
    is the request's running average. Does not mutate `state`.
    """
    if not carry_budget:
        return None
    carried = FocusReqState.fresh(len(state.uncached))
    carried.earlier_unmasked = state.budget_unmasked
    carried.earlier_decoding_steps = state.budget_decoding_steps
    return carried
