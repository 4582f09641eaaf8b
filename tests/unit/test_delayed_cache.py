"""Delayed cache: the processing set and the caching rule (spec §2, §10.11)."""

from __future__ import annotations

from sglang_focus.structs import FocusReqState
from sglang_focus.unmasking.delayed_cache import caching_rule, processing_positions, record_step

M, T = True, False  # masked, decoded


def test_first_step_of_a_block_processes_every_position():
    state = FocusReqState.fresh(6)
    state.uncached = [False, True, False, True, True, True]
    assert processing_positions(state, delayed_cache=True) == list(range(6))


def test_later_steps_process_the_uncached_positions_in_order():
    state = FocusReqState.fresh(6)
    state.steps, state.uncached = 3, [False, True, False, True, True, False]
    assert processing_positions(state, delayed_cache=True) == [1, 3, 4]
    assert processing_positions(state, delayed_cache=False) == list(range(6))


def test_nothing_uncached_processes_everything():
    state = FocusReqState(uncached=[False] * 4, steps=2)
    assert processing_positions(state, delayed_cache=True) == [0, 1, 2, 3]


def test_caching_rule_uses_the_pre_step_mask():
    state = FocusReqState.fresh(6)
    pre_step = [T, T, M, T, M, T]
    caching_rule(state, pre_step)
    # 0: decoded, right neighbour decoded -> cached; 1: right neighbour is a mask -> stays;
    # 2, 4: masks are never cached; 3: right neighbour masked -> stays; 5: last position, decoded -> cached.
    assert state.uncached == [False, True, True, True, True, False]


def test_a_token_decoded_this_step_is_cached_only_after_it_was_fed():
    state = FocusReqState.fresh(3)
    caching_rule(state, [M, M, M])  # the step that decodes everything saw only masks
    assert state.uncached == [True, True, True]
    caching_rule(state, [T, T, T])
    assert state.uncached == [False, False, False]


def test_budget_counters_follow_unmasking_and_progress_is_monotone():
    state = FocusReqState.fresh(8)
    record_step(state, newly_unmasked=3, rightmost_kept=5)
    record_step(state, newly_unmasked=0, rightmost_kept=2)
    record_step(state, newly_unmasked=1, rightmost_kept=7)
    assert (state.unmasked, state.decoding_steps, state.steps, state.progress) == (4, 2, 3, 7)
