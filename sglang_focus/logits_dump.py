"""Opt-in dump of what the model computed at each stock denoising step (`SGLANG_FOCUS_DUMP_LOGITS=DIR`).

For checking a converted checkpoint against an independent forward: with the variable set, every stock
LowConfidence step of the scheduler process writes `DIR/step-<n>.pt` (n counts from 0 per process) holding the
batch's block `input_ids` [bs·B] and `positions` [bs·B] as the forward saw them, `prefix_lens` [bs] (tokens
before each block) and the model's float32 `logits` [bs·B, vocab], before the mask column is blanked. Off (the
default) the hook costs one attribute check. Never enable it to serve: it copies the logits to disk every step.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from sglang_focus import envs

_DIR = envs.logits_dump_dir()
_STEPS = itertools.count()


def dump_step(forward_batch, full_logits: torch.Tensor) -> None:
    """Write this step's ids, positions, prefix lengths and logits when the dump is on; otherwise nothing."""
    if _DIR is None:
        return
    out = Path(_DIR)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"input_ids": forward_batch.input_ids.cpu().clone(),
                "positions": forward_batch.positions.cpu().clone(),
                "prefix_lens": torch.tensor(forward_batch.extend_prefix_lens_cpu, dtype=torch.int64),
                "logits": full_logits.detach().float().cpu().clone()},
               out / f"step-{next(_STEPS):05d}.pt")
