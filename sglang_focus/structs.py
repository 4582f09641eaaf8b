"""Data passed between the FOCUS stages. Shapes and owners are in the field comments."""

from __future__ import annotations

from typing import NamedTuple

import msgspec
import torch


class FocusReqState(msgspec.Struct):
    """Per-request state carried across FDFO rounds in SGLang's `req.dllm_algo_state`; reset at each block."""

    uncached: list[bool]  # [B] delayed cache: positions whose KV is not final yet
    steps: int = 0  # forwards run on this block so far
    progress: int = -1  # prog: rightmost block position processed by any step of this block (spec §4.7)
    unmasked: int = 0  # S: MASKED -> UNMASKED transitions in this block
    decoding_steps: int = 0  # N: steps of this block that unmasked >= 1 token

    @classmethod
    def fresh(cls, block_size: int) -> "FocusReqState":
        return cls(uncached=[True] * block_size)


class EvictionInput(NamedTuple):
    """What the model needs to score and evict, for the rows of the processing batch (device tensors)."""

    cand_rows: torch.Tensor  # [total_m] int64: rows of the processing batch that are masked candidates
    cand_cu: torch.Tensor  # [bs+1] int32: candidates of request r are cand_rows[cand_cu[r]:cand_cu[r+1]]
    cand_pos: torch.Tensor  # [total_m] int32: block positions of the candidates (ascending per request)
    target: torch.Tensor  # [bs] int32: per-request budget target (spec §4.5)
    evict: torch.Tensor  # [bs] bool: per-request eviction flag
    progress: torch.Tensor  # [bs] int32: prog before this step
    row_req: torch.Tensor  # [n] int64: request index of each processing row
    row_pos: torch.Tensor  # [n] int64: block position of each processing row
    prefix_lens: torch.Tensor  # [bs] int64: committed length h of each request
    max_m: int  # largest candidate count of a request (kernel tile size)


class RetainPlan(NamedTuple):
    """The rows kept after layer 1 and the attention window they define (device tensors)."""

    kept_rows: torch.Tensor  # [k] int64: kept rows of the processing batch, ascending
    kept_counts: torch.Tensor  # [bs] int64: kept rows per request
    window: torch.Tensor  # [bs] int64: h + rightmost kept position + 1 (keys attended at layers >= 1)
