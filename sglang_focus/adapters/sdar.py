"""SDAR (dense, Qwen3-shaped) adapter and its FOCUS-capable model class."""

from __future__ import annotations

from sglang.srt.models.sdar import SDARForCausalLM
from sglang.srt.models.utils import apply_qk_norm

from sglang_focus.adapters.base import FocusForwardMixin
from sglang_focus.forward.contract import DecoderAdapter


class SdarAdapter(DecoderAdapter):
    embedding, attention_module, output_projection = "embed_tokens", "self_attn", "o_proj"

    def project_qkv(self, attn, positions, hidden, batch):
        qkv, _ = attn.qkv_proj(hidden)
        q, k, v = qkv.split([attn.q_size, attn.kv_size, attn.kv_size], dim=-1)
        q, k = apply_qk_norm(q=q, k=k, q_norm=attn.q_norm, k_norm=attn.k_norm, head_dim=attn.head_dim,
                             alt_stream=attn.alt_stream)
        q, k = attn.rotary_emb(positions, q, k)
        return q, k, v

    def mlp(self, layer, hidden, batch):
        return layer.mlp(hidden)


class FocusSDARForCausalLM(FocusForwardMixin, SDARForCausalLM):
    """SGLang's SDARForCausalLM, evicting after layer 1 when the batch carries FOCUS eviction input."""

    focus_adapter = SdarAdapter()
