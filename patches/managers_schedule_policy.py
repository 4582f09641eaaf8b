"""Patches for sglang.srt.managers.schedule_policy (see MANIFEST)."""

from __future__ import annotations


def keep_dllm_blocks_whole(result, adder, *args, **kwargs):
    """AFTER `PrefillAdder._get_dllm_remain_tokens`: the budget for a staged dLLM request's next extend is exactly
    one block, or 0 (it waits a round) when the dLLM row budget has no block left.

    The original returns min(row budget, KV estimate, one block), except that an exhausted KV estimate (<= 0)
    falls back to the whole row budget, uncapped: a request whose fill ids run past its current block (a prompt
    that does not end on a block boundary) then extends by more than one block, and a KV estimate between 0 and
    one block cuts the block short. Every dLLM algorithm reshapes the batch into whole blocks. Algorithms with a
    separate context pass keep the original. Returns the budget; mutates nothing.
    """
    if adder.dllm_config.requires_separate_context_encoding or result <= 0:
        return result
    block = adder.dllm_block_size
    return block if adder.rem_dllm_tokens >= block else 0
