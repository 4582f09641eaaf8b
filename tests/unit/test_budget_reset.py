"""`budget_reset`: the budget counters S and N restart at every block (spec §4.5) or run over the whole request.

Blocks are decoded through the real state updates (`record_step`, `next_block_state`) and planned with the real
planner, so the target a block's first step gets is the one the server would use.
"""

from __future__ import annotations

import torch

from sglang_focus.forward.plan import plan_step
from sglang_focus.structs import FocusReqState
from sglang_focus.unmasking.delayed_cache import caching_rule, next_block_state, record_step

BLOCK, ALPHA = 16, 1.5


def decoded_block(tokens_per_step: list[int], start: FocusReqState | None = None) -> FocusReqState:
    """The state after decoding one whole block with the given tokens per step (every position processed)."""
    state = start or FocusReqState.fresh(BLOCK)
    assert sum(tokens_per_step) == BLOCK
    for newly in tokens_per_step:
        caching_rule(state, [False] * BLOCK)
        record_step(state, newly_unmasked=newly, rightmost_kept=BLOCK - 1)
    return state


def first_step_target(state: FocusReqState | None) -> int:
    """The budget target of the first step of a fully masked block (no prompt tokens), planned for one request."""
    state = state or FocusReqState.fresh(BLOCK)
    plan = plan_step([state], torch.ones(1, BLOCK, dtype=torch.bool), torch.tensor([32]), [ALPHA],
                     delayed_cache=True, device=torch.device("cpu"))
    assert plan.eviction is not None, "a fully masked block evicts from its first step"
    return int(plan.eviction.target[0])


def test_block_reset_starts_every_block_at_ceil_alpha():
    first = decoded_block([4, 4, 4, 4])
    assert next_block_state(first, carry_budget=False) is None, "SGLang starts the next block fresh"
    assert first_step_target(None) == 2


def test_request_reset_starts_the_next_block_from_the_request_average():
    first = decoded_block([4, 4, 4, 4])  # 4 tokens per step
    carried = next_block_state(first, carry_budget=True)
    assert first_step_target(carried) == 6, "ceil(1.5 * 4)"


def test_the_carried_state_resets_the_delayed_cache_and_progress():
    first = decoded_block([8, 8])
    carried = next_block_state(first, carry_budget=True)
    assert carried == FocusReqState(uncached=[True] * BLOCK, earlier_unmasked=16, earlier_decoding_steps=2)
    assert (first.unmasked, first.decoding_steps, first.steps) == (16, 2, 2), "the finished block is not mutated"


def test_the_request_average_runs_over_every_block_so_far():
    first = decoded_block([8, 8])  # 2 steps
    second = decoded_block([2, 2, 2, 2, 2, 2, 2, 2], next_block_state(first, carry_budget=True))  # 8 steps
    assert (second.budget_unmasked, second.budget_decoding_steps) == (32, 10)
    assert (second.unmasked, second.decoding_steps) == (16, 8), "the block's own S and N stay per block"
    third = next_block_state(second, carry_budget=True)
    assert first_step_target(third) == 5, "ceil(1.5 * 32 / 10)"


def test_mid_block_the_target_uses_the_carried_average():
    carried = next_block_state(decoded_block([4, 4, 4, 4]), carry_budget=True)
    record_step(carried, newly_unmasked=1, rightmost_kept=BLOCK - 1)  # the block so far: 1 token in 1 step
    carried.uncached = [False] + [True] * (BLOCK - 1)
    masked = torch.ones(1, BLOCK, dtype=torch.bool)
    masked[0, 0] = False
    plan = plan_step([carried], masked, torch.tensor([32]), [ALPHA], delayed_cache=True, device=torch.device("cpu"))
    assert int(plan.eviction.target[0]) == 6, "ceil(1.5 * 17 / 5) = ceil(5.1)"
