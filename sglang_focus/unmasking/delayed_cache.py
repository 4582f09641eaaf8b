"""Delayed cache (spec §2): which block positions a step processes, and which become cached after it."""

from __future__ import annotations

from sglang_focus.structs import FocusReqState


def processing_positions(state: FocusReqState, *, delayed_cache: bool) -> list[int]:
    """Sorted block positions to run this step: the uncached ones, or all on the block's first step."""
    block_size = len(state.uncached)
    if not delayed_cache or state.steps == 0:
        return list(range(block_size))
    uncached = [p for p, u in enumerate(state.uncached) if u]
    return uncached or list(range(block_size))


def caching_rule(state: FocusReqState, pre_step_masked: list[bool]) -> None:
    """Mark positions whose KV is final, from the mask of the forward that just ran (before its unmasking).

    A position is ready when it was fed a real token and so was its right neighbour (or it is the last one);
    a decoded token whose right neighbour is still a mask stays uncached, and a mask is never cached.
    """
    block_size = len(state.uncached)
    for p in range(block_size):
        right_ok = p == block_size - 1 or not pre_step_masked[p + 1]
        if not pre_step_masked[p] and right_ok:
            state.uncached[p] = False


def record_step(state: FocusReqState, *, newly_unmasked: int, rightmost_kept: int) -> None:
    """Advance the budget counters (S, N) and the block progress after a forward."""
    state.steps += 1
    state.unmasked += newly_unmasked
    state.decoding_steps += int(newly_unmasked > 0)
    state.progress = max(state.progress, rightmost_kept)
