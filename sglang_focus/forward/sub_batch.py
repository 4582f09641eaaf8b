"""A new ForwardBatch over a subset of a batch's rows, for the processing set and the kept rows.

Only the fields attention and the model read are rebuilt. Attention sees each request as `q` query rows at the end
of a window of `window` keys (a fake prefix of `window - q`): block attention is non-causal, so where the queries
sit in the window does not matter, and the keys are read from the KV cache through req_to_token.
"""

from __future__ import annotations

import dataclasses

import torch
from sglang.srt.model_executor.forward_batch_info import ForwardBatch


def rows_batch(
    batch: ForwardBatch,
    rows: torch.Tensor,  # [n] int64: rows of `batch` to keep, grouped by request, ascending
    row_counts: torch.Tensor,  # [bs] int64 (host): rows per request (every request keeps >= 1)
    window: torch.Tensor,  # [bs] int64 (host): keys attended per request
    *,
    positions: torch.Tensor | None = None,  # [len(batch rows)] positions, if batch.positions is not the source
) -> ForwardBatch:
    """Return a new ForwardBatch holding `rows`; `batch` is not modified."""
    counts_cpu, window_cpu = row_counts, window  # host tensors from the plan: no device read-back here
    device = batch.input_ids.device
    counts = counts_cpu.to(device)
    window_dev = window_cpu.to(device=device, dtype=batch.seq_lens.dtype)
    prefix = (window_cpu - counts_cpu).to(device=device, dtype=batch.seq_lens.dtype)
    start_loc = torch.cumsum(counts, 0) - counts
    source_positions = batch.positions if positions is None else positions
    return dataclasses.replace(
        batch,
        input_ids=batch.input_ids[rows],
        positions=source_positions[rows],
        out_cache_loc=batch.out_cache_loc[rows],
        seq_lens=window_dev,
        seq_lens_cpu=window_cpu.to(batch.seq_lens_cpu.dtype) if batch.seq_lens_cpu is not None else None,
        orig_seq_lens=window_dev,
        seq_lens_sum=int(window_cpu.sum()),
        extend_num_tokens=int(counts_cpu.sum()),
        extend_seq_lens=counts.to(batch.extend_seq_lens.dtype),
        extend_seq_lens_cpu=counts_cpu.tolist(),
        extend_prefix_lens=prefix.to(batch.extend_prefix_lens.dtype),
        extend_prefix_lens_cpu=(window_cpu - counts_cpu).tolist(),
        extend_start_loc=start_loc.to(batch.extend_start_loc.dtype),
        extend_logprob_start_lens_cpu=None,
        dllm_prompt_mask=None,
        num_token_non_padded=None,
        global_num_token_non_padded=None,
        global_num_token_non_padded_cpu=None,
        residual_stream=None,
        forward_metadata_ready=False,
        model_specific_states=dict(batch.model_specific_states or {}),
    )
