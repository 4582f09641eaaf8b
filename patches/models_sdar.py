"""Patches for sglang.srt.models.sdar (see MANIFEST)."""

from __future__ import annotations


def load_weights_with_tied_embeddings(original, model, weights):
    """AROUND `SDARForCausalLM.load_weights`: load tied checkpoints, whose head *is* the embedding module."""
    config = model.config
    head_is_embedding = model.lm_head is getattr(model.model, "embed_tokens", None)
    if not (head_is_embedding and config.tie_word_embeddings):
        return original(model, weights)
    config.tie_word_embeddings = False
    try:
        return original(model, weights)
    finally:
        config.tie_word_embeddings = True
