"""The audited forward (config `audit_every`): the model's own forward, scored and selected but not evicted.

An audited step hands the model the batch the delayed-cache-only arm (alpha = inf) would run for this step, every
processing row, and the model runs its own SGLang forward on it unchanged: same rows, same batch path, same
kernels, so the logits are that arm's. Meanwhile layers 0 and 1 score their masked candidates from the post-RoPE
q/k they hand their attention (a forward pre-hook on each layer's RadixAttention, removed afterwards; the same
`retain.candidate_importance` the evicting forward runs), and FOCUS's keep set follows from the delta by the same
selection (`retain.select_keep_mask`; under attention TP the importances are all-reduced first, as in the evicting
forward). The keep mask is recorded, not applied: the unmasking algorithm counts the decodable tokens it would
have evicted.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from sglang.srt.model_executor.forward_batch_info import ForwardBatch

from sglang_focus.forward.contract import FOCUS_AUDIT_KEY, FOCUS_AUDIT_RESULT_KEY, DecoderAdapter
from sglang_focus.forward.retain import candidate_importance, plan_from_keep_mask, select_keep_mask
from sglang_focus.forward.tensor_parallel import all_heads_importance, attention_tp, check_keep_agreement
from sglang_focus.step_timing import STEP_TIMES
from sglang_focus.structs import EvictionInput

Output = TypeVar("Output")
SCORED_LAYERS = 2  # layers 0 and 1 (spec §4.1)


def audited_forward(adapter: DecoderAdapter, model, batch: ForwardBatch, model_forward: Callable[[], Output]) -> Output:
    """Run `model_forward` (the model's own forward over every row of `batch`) while layers 0 and 1 score the
    candidates of the batch's `FOCUS_AUDIT_KEY` input; store FOCUS's keep mask under `FOCUS_AUDIT_RESULT_KEY`.

    Returns what `model_forward` returns. Raises RuntimeError if the scored layers did not each call their
    attention exactly once (the importances would not be layer 0's and layer 1's).
    """
    inp: EvictionInput = batch.model_specific_states[FOCUS_AUDIT_KEY]
    importances: list[list[torch.Tensor]] = [[] for _ in range(SCORED_LAYERS)]
    handles = [_score_on_entry(adapter, layer, inp, importances[index])
               for index, layer in enumerate(adapter.layers(model)[:SCORED_LAYERS])]
    try:
        output = model_forward()
    finally:
        for handle in handles:
            handle.remove()
    if any(len(scores) != 1 for scores in importances):
        raise RuntimeError(f"audited FOCUS forward: layers 0 and 1 called their attention "
                           f"{[len(s) for s in importances]} times, expected once each")
    with STEP_TIMES.section("selection"):
        keep = _keep_mask_on_every_rank(importances[0][0], importances[1][0], inp)
    batch.model_specific_states[FOCUS_AUDIT_RESULT_KEY] = keep
    return output


def _score_on_entry(adapter: DecoderAdapter, layer, inp: EvictionInput, into: list[torch.Tensor]):
    """Register a pre-hook on `layer`'s RadixAttention that appends the candidates' importance to `into`; returns
    its removable handle. The hook reads q and k and changes nothing."""
    attn = adapter.attention(layer)
    head_shape = adapter.head_shape(attn)

    def score(_module, args):
        q, k = args[0], args[1]
        with STEP_TIMES.section("selection"):
            into.append(candidate_importance(q, k, inp, **head_shape))

    return adapter.radix_attention(attn).register_forward_pre_hook(score)


def _keep_mask_on_every_rank(layer0: torch.Tensor, layer1: torch.Tensor, inp: EvictionInput) -> torch.Tensor:
    """[n] bool (host) keep mask from the delta of the importances over all attention heads (one all-reduce at
    TP > 1, none at TP = 1), checked across ranks under SGLANG_FOCUS_CHECK_TP_KEEP as the evicting forward is."""
    tp = attention_tp()
    importance0, importance1 = all_heads_importance(layer0, layer1, tp)
    keep = select_keep_mask(importance1 - importance0, inp)
    if tp is not None and tp.check_keep:
        check_keep_agreement(plan_from_keep_mask(keep, inp, device=layer0.device), inp, tp.group)
    return keep
