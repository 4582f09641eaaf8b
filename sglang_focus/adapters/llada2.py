"""LLaDA2 (MoE) adapter and its FOCUS-capable model class."""

from __future__ import annotations

from sglang.srt.models.llada2 import LLaDA2MoeModelLM
from sglang.srt.models.utils import apply_qk_norm

from sglang_focus.adapters.base import FocusForwardMixin
from sglang_focus.forward.contract import DecoderAdapter


class Llada2Adapter(DecoderAdapter):
    embedding, attention_module, output_projection = "word_embeddings", "attention", "dense"

    def project_qkv(self, attn, positions, hidden, batch):
        qkv, _ = attn.query_key_value(hidden)
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        if attn.use_qk_norm:
            q, k = apply_qk_norm(q=q, k=k, q_norm=attn.query_layernorm, k_norm=attn.key_layernorm,
                                 head_dim=attn.head_dim, alt_stream=attn.alt_stream)
        q, k = attn.rotary_emb(positions, q, k)
        return q, k, v

    def mlp(self, layer, hidden, batch):
        return layer.mlp(hidden, batch)


class FocusLLaDA2MoeModelLM(FocusForwardMixin, LLaDA2MoeModelLM):
    """SGLang's LLaDA2MoeModelLM, evicting after layer 1 when the batch carries FOCUS eviction input."""

    focus_adapter = Llada2Adapter()
