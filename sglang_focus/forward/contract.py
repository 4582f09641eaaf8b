"""What the evicting forward agrees on with the code around it; imports nothing of the package.

The unmasking algorithm puts the step's `EvictionInput` into the batch's `model_specific_states` under
`FOCUS_INPUT_KEY`; a FOCUS-capable model class (`adapters/`) sees the key and runs `forward.model_forward`, which
reaches the model's layers through a `DecoderAdapter` and leaves the `RetainPlan` under `FOCUS_RESULT_KEY`. An
audited step puts the input under `FOCUS_AUDIT_KEY` instead: the model runs its own forward (`forward.audit`) and
leaves the keep mask it did not apply under `FOCUS_AUDIT_RESULT_KEY`.
"""

from __future__ import annotations

FOCUS_INPUT_KEY = "focus_eviction"  # model_specific_states key: EvictionInput for this forward
FOCUS_RESULT_KEY = "focus_retained"  # written by the forward: RetainPlan
# An audited step (config `audit_every`): the model's own forward over every row of the batch, which also scores
# layers 0 and 1 and selects, without applying the selection.
FOCUS_AUDIT_KEY = "focus_audit"  # model_specific_states key: EvictionInput for this audited forward
FOCUS_AUDIT_RESULT_KEY = "focus_audit_keep"  # written by it: [n] bool (host) keep mask FOCUS would have applied


class DecoderAdapter:
    """Access by attribute name to the pieces of a decoder the evicting forward runs separately.

    Subclasses (one per architecture) set the three attribute names and add `project_qkv` and `mlp`.
    """

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

    def radix_attention(self, attn):
        """The RadixAttention of attention block `attn`: it receives post-RoPE (q, k, v, forward_batch)."""
        return attn.attn

    def head_shape(self, attn):
        return {"num_heads": attn.num_heads, "num_kv_heads": attn.num_kv_heads, "head_dim": attn.head_dim}

    def attention_output(self, attn, context):
        return getattr(attn, self.output_projection)(context)[0]

    def project_qkv(self, attn, positions, hidden, batch):
        """Post-RoPE (q [n, H·d], k [n, H_kv·d], v [n, H_kv·d]) of the normed rows `hidden` for block `attn`."""
        raise NotImplementedError

    def mlp(self, layer, hidden, batch):
        """The layer's MLP on the normed rows `hidden` of `batch`."""
        raise NotImplementedError
