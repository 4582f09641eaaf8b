"""The torch_native extend hook: a non-causal extend computes only its own query rows, with the original's output."""

from __future__ import annotations

import pytest
import torch
from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

from sglang_focus.patches.layers_attention_torch_native_backend import attend_extend_queries_only

HEADS, KV_HEADS, HEAD_DIM = 6, 2, 16
ORIGINAL = TorchNativeAttnBackend._run_sdpa_forward_extend
if hasattr(ORIGINAL, "__wrapped__"):  # the plugin loader ran in this process: test against SGLang's own function
    ORIGINAL = ORIGINAL.__wrapped__


def extend_batch(prefix_lens: list[int], extend_lens: list[int], seed: int = 0):
    """Random queries, a shuffled KV pool and req_to_token rows for requests of the given prefix/extend lengths."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    pool = sum(seq_lens) + 7
    k_cache, v_cache = (torch.randn(pool, KV_HEADS, HEAD_DIM, generator=gen) for _ in range(2))
    req_to_token = torch.zeros(len(seq_lens) + 3, max(seq_lens) + 5, dtype=torch.int64)
    slots, used = torch.randperm(pool, generator=gen), 0
    pool_rows = torch.tensor([2, 0, 4, 1, 3][:len(seq_lens)])
    for row, n in zip(pool_rows.tolist(), seq_lens):
        req_to_token[row, :n] = slots[used:used + n]
        used += n
    query = torch.randn(sum(extend_lens), HEADS, HEAD_DIM, generator=gen)
    lens = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return (query, k_cache, v_cache, req_to_token, pool_rows, lens(seq_lens), lens(prefix_lens), lens(extend_lens))


def run(fn, batch, **flags):
    query, *rest = batch
    output = torch.full_like(query, float("nan"))
    fn(None, query, output, *rest, scaling=HEAD_DIM ** -0.5, enable_gqa=True, **flags)
    return output


@pytest.mark.parametrize("prefix_lens,extend_lens", [([0], [8]), ([37, 5, 90], [8, 8, 8]), ([12, 64], [3, 1])])
def test_non_causal_extend_equals_the_padded_original(prefix_lens, extend_lens):
    batch = extend_batch(prefix_lens, extend_lens)
    expected = run(ORIGINAL, batch, causal=False)
    got = run(lambda *a, **k: attend_extend_queries_only(ORIGINAL, *a, **k), batch, causal=False)
    assert not got.isnan().any()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_causal_extend_is_left_to_the_original():
    batch = extend_batch([20, 4], [8, 8])
    calls = []

    def original(*args, **kwargs):
        calls.append(kwargs["causal"])
        return ORIGINAL(*args, **kwargs)

    got = run(lambda *a, **k: attend_extend_queries_only(original, *a, **k), batch, causal=True)
    assert calls == [True]
    assert torch.equal(got, run(ORIGINAL, batch, causal=True))
