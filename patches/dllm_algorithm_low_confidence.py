"""Patches for sglang.srt.dllm.algorithm.low_confidence (see MANIFEST)."""

from __future__ import annotations


def step_without_mask_token(original, algorithm, forward_batch, full_logits, states):
    """AROUND `LowConfidence.step`: the mask token is never a prediction, so its logit becomes -inf.

    Mutates `full_logits` in place (it is consumed only by this step). With SGLANG_FOCUS_DUMP_LOGITS set, the step's
    logits are written out first (`sglang_focus.logits_dump`).
    """
    from sglang_focus.logits_dump import dump_step

    dump_step(forward_batch, full_logits)
    if 0 <= algorithm.mask_id < full_logits.shape[-1]:
        full_logits[:, algorithm.mask_id] = float("-inf")
    return original(algorithm, forward_batch, full_logits, states)
