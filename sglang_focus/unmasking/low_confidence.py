"""The host's LowConfidence unmasking rule, on the rows that have logits.

Same rule as `sglang.srt.dllm.algorithm.low_confidence.LowConfidence.step` (confidence > τ among masked positions,
else the single most confident one; the mask token is never predicted), but logits exist only for the rows a
step kept, so evicted positions simply have no candidate and keep their id. No dense [bs·B, V] buffer is built.
"""

from __future__ import annotations

import torch


def unmask_kept_rows(
    input_ids: torch.Tensor,  # [bs, B] block ids before this step
    masked: torch.Tensor,  # [bs, B] bool: positions still to decode (mask id, and not a literal prompt mask)
    logits: torch.Tensor,  # [k, V] logits of the kept rows
    flat_rows: torch.Tensor,  # [k] int64: index of each kept row in input_ids.view(-1)
    *,
    mask_id: int,
    threshold: float,
) -> torch.Tensor:
    """Return the new [bs, B] ids. `logits` is modified in place (mask column set to -inf)."""
    bs, block = input_ids.shape
    logits[:, mask_id] = float("-inf")
    tokens = torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits, dim=-1)
    confidence_rows = torch.gather(probs, -1, tokens.unsqueeze(-1)).squeeze(-1)

    confidence = torch.full((bs * block,), float("-inf"), dtype=confidence_rows.dtype, device=logits.device)
    confidence[flat_rows] = confidence_rows
    confidence = torch.where(masked, confidence.view(bs, block), float("-inf"))
    predicted = input_ids.reshape(-1).clone()
    predicted[flat_rows] = tokens.to(predicted.dtype)
    predicted = predicted.view(bs, block)

    transfer = confidence > threshold
    top1 = torch.zeros_like(transfer)
    top1.scatter_(1, torch.argmax(confidence, dim=1, keepdim=True), True)
    top1 &= torch.isfinite(confidence)
    transfer = torch.where(transfer.any(dim=1, keepdim=True), transfer, top1)
    return torch.where(transfer & masked, predicted, input_ids)
