"""Whole blocks decoded with the real planner, selection and delayed cache, against a stub model.

The stub returns random importance deltas and unmasks a random subset of the kept masked positions; the test
tracks which slots hold KV at layers >= 2 written in this block, and checks the invariants of spec §4.7 / §10.7,
§10.8 and §10.10 at every step.
"""

from __future__ import annotations

import math

import pytest
import torch

from sglang_focus.forward.plan import plan_step, positions_of
from sglang_focus.forward.retain import plan_retention
from sglang_focus.structs import FocusReqState
from sglang_focus.unmasking.delayed_cache import caching_rule, record_step

MASK, BLOCK = 3, 16


def decode_block(seed: int, alpha: float, delayed_cache: bool, *, bs: int = 3):
    gen = torch.Generator().manual_seed(seed)
    states = [FocusReqState.fresh(BLOCK) for _ in range(bs)]
    ids = torch.full((bs, BLOCK), MASK)
    written = [set() for _ in range(bs)]  # block positions with KV at layers >= 2 written in this block
    prefix = torch.tensor([0, 32, 48][:bs])
    steps = 0
    while True:
        masked = ids == MASK
        plan = plan_step(states, masked, prefix, [alpha] * bs, delayed_cache=delayed_cache, device=torch.device("cpu"))
        kept_by_req, windows = kept_positions(plan, gen)
        yield plan, kept_by_req, windows, states, ids, written
        new_ids = ids.clone()
        for r in range(bs):
            written[r] |= set(kept_by_req[r])
            kept_masked = [p for p in kept_by_req[r] if masked[r, p]]
            if kept_masked:
                chosen = [p for p in kept_masked if torch.rand(1, generator=gen) < 0.3] or [kept_masked[0]]
                new_ids[r, chosen] = 10 + r
            newly = int((masked[r] & (new_ids[r] != MASK)).sum())
            caching_rule(states[r], masked[r].tolist())
            record_step(states[r], newly_unmasked=newly, rightmost_kept=max(kept_by_req[r]))
        ids = new_ids
        steps += 1
        if bool((masked.sum(dim=1) == 0).all()):
            return
        assert steps <= 2 * BLOCK + 2


def kept_positions(plan, gen):
    if plan.eviction is None:
        return positions_of(plan), [max(p) + 1 for p in positions_of(plan)]
    inp = plan.eviction
    delta = torch.randn(inp.cand_rows.shape[0], generator=gen)
    retained = plan_retention(delta, inp)
    kept_pos = inp.row_pos[retained.kept_rows]
    kept_req = inp.row_req[retained.kept_rows]
    kept = [kept_pos[kept_req == r].tolist() for r in range(plan.process.shape[0])]
    windows = (retained.window - inp.prefix_lens).tolist()
    return kept, windows


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("delayed_cache", [True, False])
def test_attended_slots_are_written_in_the_block(seed, delayed_cache):
    evicted_somewhere = False
    for plan, kept, windows, states, ids, written in decode_block(seed, 1.5, delayed_cache):
        for r, state in enumerate(states):
            processed = set(positions_of(plan)[r])
            assert set(kept[r]) <= processed and kept[r] == sorted(kept[r])
            assert {p for p in processed if ids[r, p] != MASK} <= set(kept[r]), "a decoded token was evicted"
            assert kept[r], "the keep set is never empty"
            attended = set(range(windows[r]))
            assert attended <= written[r] | set(kept[r]), f"request {r} attends a slot never written this block"
            old_progress = state.progress
            assert set(range(old_progress + 1)) | set(kept[r]) >= set(range(max(kept[r]) + 1))
            evicted_somewhere |= len(kept[r]) < len(processed)
    assert evicted_somewhere, "the simulation must exercise eviction"


@pytest.mark.parametrize("seed", range(4))
def test_large_alpha_never_evicts(seed):
    for plan, kept, *_ in decode_block(seed, float(BLOCK), True):
        assert plan.eviction is None
        assert kept == positions_of(plan)


def test_first_step_of_a_block_targets_ceil_alpha():
    for alpha in (1.0, 1.5, 1.8, 2.5):
        plan = next(decode_block(0, alpha, True))[0]
        assert plan.eviction is not None
        assert plan.eviction.target.tolist() == [math.ceil(alpha)] * 3


def test_prompt_block_first_step_is_prefill_and_never_evicts():
    states = [FocusReqState.fresh(BLOCK)]
    masked = torch.ones(1, BLOCK, dtype=torch.bool)
    masked[0, :5] = False  # prompt tail
    plan = plan_step(states, masked, torch.tensor([0]), [1.5], delayed_cache=True, device=torch.device("cpu"))
    assert plan.eviction is None and plan.processes_everything


def test_small_batches_run_like_stock_under_the_memory_bound_guard():
    """Mid-block, the delayed cache would run only uncached positions and may evict; under the guard (fewer block
    tokens than min_batch_tokens) the step runs every position and nothing is scored."""
    states = [FocusReqState(uncached=[False] * 4 + [True] * (BLOCK - 4), steps=2, unmasked=4, decoding_steps=2)
              for _ in range(2)]
    masked = torch.ones(2, BLOCK, dtype=torch.bool)
    masked[:, :4] = False
    args = dict(delayed_cache=True, device=torch.device("cpu"))
    focus = plan_step(states, masked, torch.tensor([0, 0]), [1.5, 1.5], min_batch_tokens=2 * BLOCK, **args)
    guarded = plan_step(states, masked, torch.tensor([0, 0]), [1.5, 1.5], min_batch_tokens=2 * BLOCK + 1, **args)
    assert focus.eviction is not None and focus.row_counts.tolist() == [BLOCK - 4] * 2
    assert guarded.eviction is None and guarded.processes_everything
    assert guarded.rows.tolist() == list(range(2 * BLOCK)) and guarded.window.tolist() == [BLOCK, BLOCK]


def test_an_opted_out_request_runs_its_whole_block_and_is_never_a_candidate():
    """Mid-block, beside a request that evicts: the opted-out one (enabled: false) processes every position, as
    stock does, and contributes no candidate, so nothing of it is scored or evicted."""
    states = [FocusReqState(uncached=[False] * 4 + [True] * (BLOCK - 4), steps=2, unmasked=4, decoding_steps=2)
              for _ in range(2)]
    masked = torch.ones(2, BLOCK, dtype=torch.bool)
    masked[:, :4] = False
    plan = plan_step(states, masked, torch.tensor([0, 0]), [1.5, math.inf], delayed_cache=True,
                     device=torch.device("cpu"), as_stock=[False, True])
    assert positions_of(plan) == [list(range(4, BLOCK)), list(range(BLOCK))]
    assert plan.window.tolist() == [BLOCK, BLOCK]
    inp = plan.eviction
    assert inp is not None and inp.evict.tolist() == [True, False]
    assert inp.cand_cu.tolist() == [0, BLOCK - 4, BLOCK - 4], "the opted-out request has no candidate"
    assert (inp.row_req[inp.cand_rows_cpu] == 0).all()
    keep = plan_retention(torch.arange(BLOCK - 4, 0, -1, dtype=torch.float32), inp)  # the leftmost score highest
    assert keep.kept_counts.tolist() == [3, BLOCK]
