"""Data passed between the FOCUS stages. Shapes and owners are in the field comments."""

from __future__ import annotations

from typing import NamedTuple

import msgspec
import torch


class FocusReqState(msgspec.Struct):
    """Per-request state carried across FDFO rounds in SGLang's `req.dllm_algo_state`; reset at each block.

    Everything but the `earlier_*` counters describes the current block. Those hold S and N of the request's
    finished blocks when the budget runs over the request (`budget_reset: request`) and stay 0 otherwise, so the
    budget average is always (earlier S + S) / (earlier N + N).
    """

    uncached: list[bool]  # [B] delayed cache: positions whose KV is not final yet
    steps: int = 0  # forwards run on this block so far
    progress: int = -1  # prog: rightmost block position processed by any step of this block (spec §4.7)
    unmasked: int = 0  # S: MASKED -> UNMASKED transitions in this block
    decoding_steps: int = 0  # N: steps of this block that unmasked >= 1 token
    earlier_unmasked: int = 0  # S of the request's finished blocks (budget_reset: request), else 0
    earlier_decoding_steps: int = 0  # N of the request's finished blocks (budget_reset: request), else 0

    @classmethod
    def fresh(cls, block_size: int) -> "FocusReqState":
        return cls(uncached=[True] * block_size)

    @property
    def budget_unmasked(self) -> int:
        """S the budget average divides: this block's, plus the earlier blocks' when carried over."""
        return self.earlier_unmasked + self.unmasked

    @property
    def budget_decoding_steps(self) -> int:
        """N the budget average divides by: this block's, plus the earlier blocks' when carried over."""
        return self.earlier_decoding_steps + self.decoding_steps


class EvictionInput(NamedTuple):
    """What the model needs to score and evict, for the rows of the processing batch.

    Device tensors feed the kernels; the host copies let the kept-row plan be built after a single device-to-host
    copy of the keep mask (no other synchronisation in the forward).
    """

    cand_rows: torch.Tensor  # [total_m] int64 (device): rows of the processing batch that are masked candidates
    cand_cu: torch.Tensor  # [bs+1] int32 (device): candidates of request r are cand_rows[cand_cu[r]:cand_cu[r+1]]
    cand_pos: torch.Tensor  # [total_m] int32 (device): block positions of the candidates (ascending per request)
    target: torch.Tensor  # [bs] int32 (device): per-request budget target (spec §4.5)
    evict: torch.Tensor  # [bs] bool (device): per-request eviction flag
    evict_cpu: torch.Tensor  # [bs] bool (host): evict (the requests an audited step counts)
    progress: torch.Tensor  # [bs] int32 (device): prog before this step
    row_req: torch.Tensor  # [n] int64 (host): request index of each processing row
    row_pos: torch.Tensor  # [n] int64 (host): block position of each processing row
    cand_rows_cpu: torch.Tensor  # [total_m] int64 (host): cand_rows
    prefix_lens: torch.Tensor  # [bs] int64 (host): committed length h of each request
    max_m: int  # largest candidate count of a request (kernel tile size)


class RetainPlan(NamedTuple):
    """The rows kept after layer 1 and the attention window they define."""

    kept_rows: torch.Tensor  # [k] int64 (device): kept rows of the processing batch, ascending
    kept_counts: torch.Tensor  # [bs] int64 (host): kept rows per request
    rightmost: torch.Tensor  # [bs] int64 (host): rightmost kept block position per request
    window: torch.Tensor  # [bs] int64 (host): h + rightmost + 1 (keys attended at layers >= 1)
