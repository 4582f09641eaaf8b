"""CPU stand-in for `sgl_kernel`, whose CPU build is not published on PyPI.

SGLang 0.5.23 imports two helpers from it when running on the CPU; both are written here in plain torch with
the same contracts. Nothing is registered under `torch.ops.sgl_kernel`, so SGLang takes its torch code paths
(it probes for those ops before using them).
"""

from __future__ import annotations

import ctypes

import torch

__version__ = "0.0.0+cpu-standin"


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,  # [bs] rows of req_to_token to write
    req_to_token: torch.Tensor,  # [pool_size, pool_len] int32, written in place
    start_offset: torch.Tensor,  # [bs] first column written per row
    end_offset: torch.Tensor,  # [bs] one past the last column written per row
    out_cache_loc: torch.Tensor,  # [sum(end - start)] cache slots, packed row after row
    pool_len: int,
) -> None:
    """`req_to_token[req_pool_indices[i], start[i]:end[i]] = ` the i-th consecutive chunk of `out_cache_loc`."""
    lengths = (end_offset - start_offset).to(torch.int64)
    total = int(lengths.sum())
    if total == 0:
        return
    assert req_to_token.shape[1] == pool_len, "pool_len must equal req_to_token.shape[1]"
    row_of_token = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    chunk_start = torch.cumsum(lengths, 0) - lengths
    rank_in_chunk = torch.arange(total) - chunk_start[row_of_token]
    rows = req_pool_indices.to(torch.int64)[row_of_token]
    cols = start_offset.to(torch.int64)[row_of_token] + rank_in_chunk
    req_to_token[rows, cols] = out_cache_loc[:total].to(req_to_token.dtype)


def _byte_rows(data_ptr: int, row_bytes: int, num_rows: int) -> torch.Tensor:
    """A [num_rows, row_bytes] uint8 view of memory owned by a live tensor at `data_ptr`."""
    raw = (ctypes.c_uint8 * (row_bytes * num_rows)).from_address(data_ptr)
    return torch.frombuffer(raw, dtype=torch.uint8).view(num_rows, row_bytes)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,  # [num_buffers] uint64 base addresses of the KV buffers
    strides: torch.Tensor,  # [num_buffers] bytes per cache slot of each buffer
    tgt_loc: torch.Tensor,  # [n] destination slots
    src_loc: torch.Tensor,  # [n] source slots
) -> None:
    """For every buffer, copy slot `src_loc[i]` to slot `tgt_loc[i]`; reads all sources before writing."""
    if tgt_loc.numel() == 0:
        return
    src = src_loc.to(torch.int64)
    tgt = tgt_loc.to(torch.int64)
    num_rows = int(torch.maximum(src.max(), tgt.max())) + 1
    for ptr, row_bytes in zip(data_ptrs.tolist(), strides.tolist()):
        rows = _byte_rows(int(ptr), int(row_bytes), num_rows)
        rows[tgt] = rows[src].clone()


def _unsupported(name: str):
    def kernel(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not provided by the CPU stand-in: speculative decoding is not supported "
            "on the CPU development setup."
        )

    kernel.__name__ = name
    return kernel


# SGLang imports these speculative-decoding kernels on the CPU at module import time; dLLM decoding never calls
# them, so they exist only to let those modules import, and fail loudly if anything does call them.
_SPECULATIVE_ONLY = (
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_tree_kernel_efficient_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
    "verify_tree_greedy_cpu",
)
globals().update({name: _unsupported(name) for name in _SPECULATIVE_ONLY})
