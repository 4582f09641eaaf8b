"""The model forward with eviction inside layer 1 (spec §4.1, §4.8, §4.10).

Layer 0 runs on the processing rows and its masked-candidate q/k are scored; layer 1 projects q/k/v and writes
KV for every processing row, scores again, and the rows that survive selection (with their residual) run
layer-1 attention and MLP and every later layer, the final norm and the LM head. Under attention TP > 1 the
importances are summed over the ranks before the delta (`forward.tensor_parallel`), so every rank keeps the same rows.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from sglang.srt.layers.layer_boundary.residual import batch as residual_batch
from sglang.srt.layers.layer_boundary.residual.stream import ResidualStream
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_executor.forward_context import forward_context, get_attn_backend, get_forward_context

from sglang_focus.forward.attention import kv_write_scales, replan_attention
from sglang_focus.forward.contract import FOCUS_INPUT_KEY, FOCUS_RESULT_KEY, DecoderAdapter
from sglang_focus.forward.retain import candidate_importance, plan_retention
from sglang_focus.forward.sub_batch import rows_batch
from sglang_focus.forward.tensor_parallel import all_heads_importance, attention_tp, check_keep_agreement
from sglang_focus.step_timing import STEP_TIMES
from sglang_focus.structs import EvictionInput, RetainPlan


class Scored(NamedTuple):
    hidden: torch.Tensor
    importance: torch.Tensor  # [total_m] fp32


def focus_forward(adapter: DecoderAdapter, model, input_ids: torch.Tensor, positions: torch.Tensor,
                  batch: ForwardBatch):
    """Run the evicting forward; returns the kept rows' LogitsProcessorOutput and stores the RetainPlan in the
    batch's model_specific_states (FOCUS_RESULT_KEY)."""
    inp: EvictionInput = batch.model_specific_states[FOCUS_INPUT_KEY]
    layers = adapter.layers(model)
    hidden = adapter.embed(model, input_ids)
    residual_batch.start(batch)
    layer0 = _layer_scoring_candidates(adapter, layers[0], positions, hidden, batch, inp)
    hidden, plan, kept_batch = _layer1_with_eviction(adapter, layers[1], positions, layer0, batch, inp)
    batch.model_specific_states[FOCUS_RESULT_KEY] = plan
    kept_positions = positions[plan.kept_rows]
    with forward_context(get_forward_context(), forward_batch=kept_batch):
        for layer in layers[2:]:
            hidden = layer(kept_positions, hidden, kept_batch)
        hidden = residual_batch.complete_output(hidden, kept_batch)
        hidden = residual_batch.final_norm(hidden, kept_batch, adapter.final_norm(model))
        return model.logits_processor(input_ids[plan.kept_rows], hidden, model.lm_head, kept_batch)


def _layer_scoring_candidates(adapter, layer, positions, hidden, batch, inp) -> Scored:
    """Layer 0, unchanged, plus the importance of its masked candidates."""
    attn = adapter.attention(layer)
    normed = layer.attn_boundary.prepare(hidden, batch)
    q, k, v = adapter.project_qkv(attn, positions, normed, batch)
    with STEP_TIMES.section("selection"):
        importance = candidate_importance(q, k, inp, **adapter.head_shape(attn))
    out = adapter.attention_output(attn, attn.attn(q, k, v, batch))
    hidden = layer.attn_boundary.finish(out, batch)
    hidden = adapter.mlp(layer, layer.ffn_boundary.prepare(hidden, batch), batch)
    return Scored(layer.ffn_boundary.finish(hidden, batch), importance)


def _layer1_with_eviction(adapter, layer, positions, layer0: Scored, batch, inp):
    """Layer 1: q/k/v and KV for every processing row, selection, then attention and MLP on the kept rows."""
    attn = adapter.attention(layer)
    normed = layer.attn_boundary.prepare(layer0.hidden, batch)
    q, k, v = adapter.project_qkv(attn, positions, normed, batch)
    write_kv(attn.attn, batch, k, v)
    with STEP_TIMES.section("selection"):
        importance = candidate_importance(q, k, inp, **adapter.head_shape(attn))
        plan = _retention_on_every_rank(layer0.importance, importance, inp)
        kept_batch = _kept_rows_batch(batch, plan)
    rows = plan.kept_rows
    with forward_context(get_forward_context(), forward_batch=kept_batch):
        out = attn.attn(q[rows], k[rows], v[rows], kept_batch, save_kv_cache=False)
        hidden = layer.attn_boundary.finish(adapter.attention_output(attn, out), kept_batch)
        hidden = adapter.mlp(layer, layer.ffn_boundary.prepare(hidden, kept_batch), kept_batch)
        hidden = layer.ffn_boundary.finish(hidden, kept_batch)
    return hidden, plan, kept_batch


def _retention_on_every_rank(layer0: torch.Tensor, layer1: torch.Tensor, inp: EvictionInput) -> RetainPlan:
    """Select from the delta of the importances over all attention heads: this rank's `layer0`/`layer1` [total_m]
    summed over the attention-TP ranks (one all-reduce; none at TP = 1), so every rank derives the same plan, which
    SGLANG_FOCUS_CHECK_TP_KEEP verifies."""
    tp = attention_tp()
    importance0, importance1 = all_heads_importance(layer0, layer1, tp)
    plan = plan_retention(importance1 - importance0, inp)
    if tp is not None and tp.check_keep:
        check_keep_agreement(plan, inp, tp.group)
    return plan


def _kept_rows_batch(batch: ForwardBatch, plan: RetainPlan) -> ForwardBatch:
    """The kept rows as a batch of their own, seeded with their residual and with attention re-planned."""
    residual = residual_batch.written_residual(batch)[plan.kept_rows]
    residual_batch.clear(batch)
    kept = rows_batch(batch, plan.kept_rows, plan.kept_counts, plan.window)
    kept.residual_stream = ResidualStream(residual)
    replan_attention(kept)
    return kept


def write_kv(radix_attn, batch: ForwardBatch, k: torch.Tensor, v: torch.Tensor) -> None:
    """Write `k`/`v` of every row of `batch` into the KV cache as the backend's own extend write would: at the
    batch's write ids with their physical mark (the unified pool refuses unmarked ids) and with the backend's k/v
    scales (FlashInfer's FP8 scales)."""
    k = k.view(-1, radix_attn.tp_k_head_num, radix_attn.qk_head_dim)
    v = v.view(-1, radix_attn.tp_v_head_num, radix_attn.v_head_dim)
    backend = get_attn_backend()
    backend.token_to_kv_pool.set_kv_buffer(radix_attn, KVWriteLoc.for_batch(batch), k, v,
                                           *kv_write_scales(backend, radix_attn))
