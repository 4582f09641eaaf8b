"""Replaying FOCUS's selection on a stock trajectory: the server's kernels, fair baselines, the budget reset."""

from __future__ import annotations

import random

import pytest
import torch

from sglang_focus import kernels
from sglang_focus.analysis import selection as sel


def trajectory(seed: int, requests: int = 6, block: int = 16) -> list[sel.StepRecord]:
    """Random stock-like trajectories: two blocks per request, each step decoding 1-4 of the masked positions."""
    rng = random.Random(seed)
    steps = []
    for r in range(requests):
        for b in range(2):
            masked, index = list(range(block)), 0
            while masked:
                count = min(len(masked), rng.randint(1, 4))
                chosen = set(rng.sample(masked, count))
                steps.append(sel.StepRecord(r, "walk" if r % 2 else "sort", b * block, index, b == 0 and index == 0,
                                            list(masked), [rng.gauss(0, 1) for _ in masked],
                                            [p in chosen for p in masked]))
                masked, index = [p for p in masked if p not in chosen], index + 1
    return steps


@pytest.mark.parametrize("reset", sel.BUDGET_RESETS)
def test_focus_keep_sets_are_what_the_server_kernels_select(reset):
    """Every replayed FOCUS keep set equals the spec reference's for the step's own target, flag and progress."""
    for s in sel.replay(trajectory(0), alpha=1.5, budget_reset=reset):
        m = len(s.step.positions)
        reference = kernels.select_enforce_reference(
            torch.tensor(s.step.delta), torch.tensor(s.step.positions), torch.tensor([0, m], dtype=torch.int32),
            torch.tensor([s.target]), torch.tensor([s.evicts]), torch.tensor([s.progress]))
        assert s.kept["focus"] == reference.tolist()


def test_baselines_keep_exactly_focus_kept_count_and_oracle_keeps_the_decoded():
    for s in sel.replay(trajectory(1)):
        count = sum(s.kept["focus"])
        assert sum(s.kept["random"]) == sum(s.kept["leftmost"]) == count
        assert s.kept["leftmost"] == [i < count for i in range(len(s.step.positions))]
        assert s.kept["oracle"] == s.step.decoded


def test_recall_is_one_when_nothing_is_evicted():
    selections = sel.replay(trajectory(2), alpha=float("inf"))
    assert not any(s.evicts for s in selections)
    metrics = sel.report(selections)["by_task"]["all"]
    for selector in sel.SELECTORS:
        assert metrics[selector]["decodable_recall"] == 1.0
        assert metrics[selector]["wrong_evictions_per_step"] == 0.0


def test_prefill_steps_never_evict():
    selections = sel.replay(trajectory(3), alpha=1.0)
    assert all(all(s.kept["focus"]) for s in selections if s.step.prefill)
    assert any(s.evicts for s in selections)


def test_progress_is_the_rightmost_position_kept_earlier_in_the_block():
    selections = sel.replay(trajectory(4), alpha=1.0)
    for before, after in zip(selections, selections[1:]):
        if (before.step.request, before.step.block) != (after.step.request, after.step.block):
            assert after.progress == -1
            continue
        kept = [p for p, k in zip(before.step.positions, before.kept["focus"]) if k]
        assert after.progress == max([before.progress, *kept])


def _first_steps_of_second_blocks(selections):
    return [s for s in selections if s.step.block > 0 and s.step.block_step == 0]


def test_budget_reset_per_block_starts_every_block_at_ceil_alpha():
    for s in _first_steps_of_second_blocks(sel.replay(trajectory(5), alpha=1.5, budget_reset="block")):
        assert s.target == 2


def test_budget_reset_per_request_carries_the_running_average_into_the_next_block():
    steps = trajectory(5)
    for s in _first_steps_of_second_blocks(sel.replay(steps, alpha=1.5, budget_reset="request")):
        earlier = [t for t in steps if t.request == s.step.request and t.block < s.step.block]
        average = sum(sum(t.decoded) for t in earlier) / len(earlier)
        assert s.target == min(len(s.step.positions), max(1, -(-1.5 * average // 1)))


def test_report_tables_every_task_and_step_index():
    result = sel.report(sel.replay(trajectory(6)))
    assert set(result["by_task"]) == {"all", "sort", "walk"}
    assert [row["block_step"] for row in result["by_block_step"]][0] == "0"
    assert "leftmost" in sel.format_report(result, alpha=1.5, budget_reset="block")
