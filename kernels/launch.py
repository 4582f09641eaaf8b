"""Launch parameters for the FOCUS Triton kernels, kept apart so they can be tested without a GPU."""

from typing import NamedTuple

MAX_CANDIDATES = 128  # largest per-request candidate count the single-tile kernels accept
MIN_TILE = 16  # tl.dot needs every tile dimension >= 16
MAX_HEAD_TILE = 64  # head-dim chunk loaded per iteration of the score loop


class ImportanceLaunch(NamedTuple):
    block_m: int  # tile edge over candidates (queries and keys), a power of two >= max_m
    block_d: int  # head-dim chunk, a power of two
    num_warps: int


class SelectLaunch(NamedTuple):
    block_m: int  # candidates per program, a power of two >= max_m
    num_warps: int


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= ``max(n, 1)``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def candidate_tile(max_m: int) -> int:
    """Tile edge for up to ``max_m`` candidates per request; asserts ``0 <= max_m <= MAX_CANDIDATES``."""
    assert 0 <= max_m <= MAX_CANDIDATES, f"max_m={max_m} outside [0, {MAX_CANDIDATES}]"
    return max(MIN_TILE, next_power_of_2(max_m))


def importance_launch(max_m: int, head_dim: int) -> ImportanceLaunch:
    """Tiles for ``importance_triton``: three ``[block_m, block_m]`` fp32 score tiles live in registers."""
    assert head_dim >= 1, "head_dim must be positive"
    block_m = candidate_tile(max_m)
    block_d = min(MAX_HEAD_TILE, max(MIN_TILE, next_power_of_2(head_dim)))
    return ImportanceLaunch(block_m=block_m, block_d=block_d, num_warps=4 if block_m <= 32 else 8)


def select_launch(max_m: int) -> SelectLaunch:
    """Tiles for ``select_enforce_triton``: ``[block_m, block_m]`` comparison matrices live in registers."""
    block_m = candidate_tile(max_m)
    return SelectLaunch(block_m=block_m, num_warps=2 if block_m <= 32 else 4)
