"""Budget formula (FOCUS_SPEC §4.5, §10.12): target and eviction flag per request."""

import math

import pytest
import torch

from sglang_focus.kernels import average_decoded, budget_targets


def budget(num_masked, avg, alpha):
    target, evict = budget_targets(torch.tensor(num_masked, dtype=torch.int32), torch.tensor(avg), alpha)
    return target.tolist(), evict.tolist()


def test_no_candidates_means_no_target_and_no_eviction():
    assert budget([0, -1], [3.0, 3.0], 1.5) == ([0, 0], [False, False])


def test_average_below_one_counts_as_one():
    assert budget([10, 10], [0.25, 1.0], 1.5) == ([2, 2], [True, True])


def test_alpha_one_keeps_the_rounded_up_average():
    assert budget([10, 10, 10], [1.0, 2.5, 3.0], 1.0) == ([1, 3, 3], [True, True, True])


def test_target_is_capped_at_the_candidate_count_without_eviction():
    assert budget([2, 6, 7], [4.0, 4.0, 4.0], 1.5) == ([2, 6, 6], [False, False, True])


def test_infinite_alpha_disables_eviction():
    assert budget([1, 5, 32], [1.0, 2.0, 7.5], math.inf) == ([1, 5, 32], [False, False, False])


def test_per_request_alpha_tensor():
    alpha = torch.tensor([1.0, 1.8, math.inf])
    assert budget([8, 8, 8], [2.0, 2.0, 2.0], alpha) == ([2, 4, 8], [True, True, False])


@pytest.mark.parametrize("alpha,want", [(1.0, 1), (1.5, 2), (1.8, 2), (2.0, 2), (2.1, 3)])
def test_first_step_of_a_block_targets_ceil_alpha(alpha, want):
    avg = average_decoded(torch.tensor([0]), torch.tensor([0]))
    target, evict = budget_targets(torch.tensor([32]), avg, alpha)
    assert target.tolist() == [want] and evict.tolist() == [True]


def test_average_decoded_is_tokens_per_productive_step():
    assert average_decoded(torch.tensor([0, 6, 3]), torch.tensor([0, 4, 1])).tolist() == [1.0, 1.5, 3.0]


def test_target_keeps_the_integer_dtype():
    target, evict = budget_targets(torch.tensor([4], dtype=torch.int32), torch.tensor([1.0]), 1.5)
    assert target.dtype == torch.int32 and evict.dtype == torch.bool
