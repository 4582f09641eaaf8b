"""What SDAR and LLaDA2 share: module names differ, the decoder-layer structure does not."""

from __future__ import annotations

import torch

from sglang_focus.forward.model_forward import FOCUS_INPUT_KEY, focus_forward


class DecoderAdapter:
    """Access by attribute name; subclasses add the q/k/v projection and the MLP call."""

    embedding: str  # attribute of model.model holding the token embedding
    attention_module: str  # attribute of a decoder layer holding its attention block
    output_projection: str  # attribute of the attention block holding its output projection

    def embed(self, model, input_ids):
        return getattr(model.model, self.embedding)(input_ids)

    def layers(self, model):
        return model.model.layers

    def final_norm(self, model):
        return model.model.norm

    def attention(self, layer):
        return getattr(layer, self.attention_module)

    def head_shape(self, attn):
        return {"num_heads": attn.num_heads, "num_kv_heads": attn.num_kv_heads, "head_dim": attn.head_dim}

    def attention_output(self, attn, context):
        return getattr(attn, self.output_projection)(context)[0]


class FocusForwardMixin:
    """Put first in the bases of a SGLang model class: evicts when the batch carries FOCUS eviction input,
    otherwise runs the SGLang model's own forward unchanged."""

    focus_adapter: DecoderAdapter

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, pp_proxy_tensors=None):
        states = forward_batch.model_specific_states
        if states and FOCUS_INPUT_KEY in states:
            return focus_forward(self.focus_adapter, self, input_ids, positions, forward_batch)
        return super().forward(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
