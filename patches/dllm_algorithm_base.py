"""Patches for sglang.srt.dllm.algorithm.base (see MANIFEST)."""

from __future__ import annotations

import torch

from sglang_focus.stats import STEP_KEY
from sglang_focus.step_timing import STEP_TIMES


def _positions_to_decode(algorithm, forward_batch) -> torch.Tensor:
    """[bs] count of mask ids in each request's block, literal prompt mask ids excluded (a new tensor)."""
    ids = forward_batch.input_ids.view(forward_batch.batch_size, algorithm.block_size)
    to_decode = ids == algorithm.mask_id
    if forward_batch.dllm_prompt_mask is not None:
        to_decode &= ~forward_batch.dllm_prompt_mask
    return to_decode.sum(dim=1)


def count_stock_decoding_steps(original, algorithm, model_runner, forward_batch, algo_states=None):
    """AROUND `DllmAlgorithm._run_fdfo`: per-request step counts for the algorithms SGLang ships.

    Runs the original FDFO round unchanged, then puts one delta per request into the result's
    `logits_output.customized_info[STEP_KEY]` (the format FOCUS writes, see sglang_focus.stats): one forward, the
    whole block processed and kept, nothing evicted, the masked positions before the step and how many of them the
    step decoded. The scheduler hook turns the deltas into `meta_info["focus_stats"]`, so a stock arm reports tokens
    per forward the same way as FOCUS. Costs one host sync of two [bs] counts per forward. Leaves results that
    already carry step stats alone. Times the round as the `step` section of sglang_focus.step_timing (a no-op
unless SGLANG_FOCUS_STEP_TIMES is set). Returns the original's result.
    """
    with STEP_TIMES.section("step"):
        before = _positions_to_decode(algorithm, forward_batch)
        result = original(algorithm, model_runner, forward_batch, algo_states)
    STEP_TIMES.end_step()
    logits_output = result[0]
    info = getattr(logits_output, "customized_info", None)
    if info is not None and STEP_KEY in info:
        return result
    after = _positions_to_decode(algorithm, forward_batch)
    masked, left = torch.stack([before, after]).tolist()
    block = algorithm.block_size
    deltas = [{"forwards": 1, "processed": block, "kept": block, "evicted": 0, "masked": m, "unmasked": m - rest}
              for m, rest in zip(masked, left)]
    logits_output.customized_info = {**(info or {}), STEP_KEY: deltas}
    return result
