"""Launch parameters of the Triton kernels (tile sizes, warps), checked without a GPU."""

import pytest

from sglang_focus.kernels.launch import (
    MAX_CANDIDATES,
    candidate_tile,
    importance_launch,
    next_power_of_2,
    select_launch,
)


def test_next_power_of_2():
    assert [next_power_of_2(n) for n in (0, 1, 2, 3, 16, 17, 64, 65)] == [1, 1, 2, 4, 16, 32, 64, 128]


@pytest.mark.parametrize("max_m", [0, 1, 15, 16, 17, 32, 33, 64, 100, 128])
def test_candidate_tile_is_a_power_of_two_covering_max_m_and_dot_minimum(max_m):
    tile = candidate_tile(max_m)
    assert tile >= max(max_m, 16) and tile & (tile - 1) == 0 and tile < 2 * max(max_m, 16)


@pytest.mark.parametrize("max_m", [-1, MAX_CANDIDATES + 1])
def test_candidate_count_outside_the_single_tile_range_is_refused(max_m):
    with pytest.raises(AssertionError):
        candidate_tile(max_m)


@pytest.mark.parametrize("head_dim,block_d", [(8, 16), (24, 32), (64, 64), (80, 64), (128, 64), (256, 64)])
def test_importance_head_dim_chunk(head_dim, block_d):
    assert importance_launch(32, head_dim).block_d == block_d


def test_warps_grow_with_the_tile():
    assert importance_launch(32, 128).num_warps == 4 and importance_launch(64, 128).num_warps == 8
    assert select_launch(32).num_warps == 2 and select_launch(128).num_warps == 4
