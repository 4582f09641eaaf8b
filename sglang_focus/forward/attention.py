"""Attention metadata for a batch FOCUS built itself (processing rows, kept rows)."""

from __future__ import annotations

from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_executor.forward_context import get_attn_backend


def prefer_paged_attention(backend) -> None:
    """FlashInfer's dLLM plan attends the block's own rows through a ragged k/v merged with the paged prefix;
    FOCUS's rows are a scattered subset of the block, so every key must come from the paged KV cache instead.
    No-op for backends without that switch (torch_native reads all keys from the cache already)."""
    if hasattr(backend, "use_paged"):
        backend.use_paged = True


def replan_attention(batch: ForwardBatch) -> None:
    """Plan the backend for `batch` (torch_native plans nothing; FlashInfer plans its paged wrapper)."""
    backend = get_attn_backend()
    prefer_paged_attention(backend)
    backend.init_forward_metadata(batch)
