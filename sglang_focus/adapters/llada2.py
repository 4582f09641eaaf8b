"""LLaDA2 (MoE) adapter and its FOCUS-capable model class."""

from __future__ import annotations

import torch
from sglang.srt.models.llada2 import LLaDA2MoeModelLM
from sglang.srt.models.utils import apply_qk_norm

from sglang_focus.forward.model_forward import FOCUS_INPUT_KEY, focus_forward


class Llada2Adapter:
    def embed(self, model, input_ids):
        return model.model.word_embeddings(input_ids)

    def layers(self, model):
        return model.model.layers

    def final_norm(self, model):
        return model.model.norm

    def attention(self, layer):
        return layer.attention

    def head_shape(self, attn):
        return {"num_heads": attn.num_heads, "num_kv_heads": attn.num_kv_heads, "head_dim": attn.head_dim}

    def project_qkv(self, attn, positions, hidden, batch):
        qkv, _ = attn.query_key_value(hidden)
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        if attn.use_qk_norm:
            q, k = apply_qk_norm(q=q, k=k, q_norm=attn.query_layernorm, k_norm=attn.key_layernorm,
                                 head_dim=attn.head_dim, alt_stream=attn.alt_stream)
        q, k = attn.rotary_emb(positions, q, k)
        return q, k, v

    def attention_output(self, attn, context):
        return attn.dense(context)[0]

    def mlp(self, layer, hidden, batch):
        return layer.mlp(hidden, batch)


class FocusLLaDA2MoeModelLM(LLaDA2MoeModelLM):
    """SGLang's LLaDA2MoeModelLM, evicting after layer 1 when the batch carries FOCUS eviction input."""

    focus_adapter = Llada2Adapter()

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, pp_proxy_tensors=None):
        states = forward_batch.model_specific_states
        if states and FOCUS_INPUT_KEY in states:
            return focus_forward(self.focus_adapter, self, input_ids, positions, forward_batch)
        return super().forward(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
