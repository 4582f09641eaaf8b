"""Patches for sglang.srt.layers.attention.torch_native_backend (see MANIFEST)."""

from __future__ import annotations

import torch
from torch.nn.functional import scaled_dot_product_attention


def attend_extend_queries_only(original, backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices,
                               seq_lens, extend_prefix_lens, extend_seq_lens, encoder_lens=None, scaling=None,
                               enable_gqa=False, causal=False, is_cross_attn=False, sliding_window_size=None):
    """AROUND `TorchNativeAttnBackend._run_sdpa_forward_extend`: a non-causal extend attends with its own query rows.

    The original pads every request's queries to its whole sequence (`per_req_query_redudant`: uninitialised rows
    for the prefix) and runs SDPA over seq_len x seq_len, then drops the prefix rows. Without a causal mask a query
    row's output does not depend on the other query rows, so running only the `extend_seq_lens[i]` new rows against
    the request's keys gives the same rows (bit-equal, or within float rounding where SDPA blocks differently) for
    a fraction of the work. Causal extends, cross-attention and sliding windows go to the original.
    """
    if causal or encoder_lens is not None or is_cross_attn or sliding_window_size not in (None, -1):
        return original(backend, query, output, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
                        extend_prefix_lens, extend_seq_lens, encoder_lens, scaling=scaling, enable_gqa=enable_gqa,
                        causal=causal, is_cross_attn=is_cross_attn, sliding_window_size=sliding_window_size)
    heads_first = query.movedim(0, query.dim() - 2)  # [heads, tokens, head_dim]
    start = 0
    for request, (kv_len, q_len) in enumerate(zip(seq_lens.tolist(), extend_seq_lens.tolist())):
        tokens = req_to_token[req_pool_indices[request], :kv_len]
        key = k_cache[tokens].movedim(0, query.dim() - 2)
        value = v_cache[tokens].movedim(0, query.dim() - 2)
        rows = heads_first[:, start:start + q_len, :]
        if not (rows.dtype == key.dtype == value.dtype):
            key, value = key.to(rows.dtype), value.to(rows.dtype)
        attended = scaled_dot_product_attention(rows.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0),
                                                enable_gqa=enable_gqa, scale=scaling, is_causal=False)
        output[start:start + q_len] = attended.squeeze(0).movedim(query.dim() - 2, 0)
        start += q_len
    return output


__all__ = ["attend_extend_queries_only"]
