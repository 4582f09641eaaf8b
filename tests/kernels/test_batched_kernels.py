"""The vectorised PyTorch kernels (the CPU runtime path) against the per-request loop references."""

import itertools

import pytest
import torch

from sglang_focus.kernels import importance, select_enforce
from sglang_focus.kernels.batched import padding

BLOCK = 32


def offsets(lengths):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)


def ragged_lengths(seed, num_req=12):
    gen = torch.Generator().manual_seed(seed)
    return [0, 1, 2, BLOCK, 0] + torch.randint(0, BLOCK + 1, (num_req - 5,), generator=gen).tolist()


def test_padding_maps_slots_to_flat_candidates():
    pad = padding(offsets([2, 0, 3]), max_m=3)
    assert pad.valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    assert pad.index[pad.valid].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("heads", [(4, 4), (8, 2), (6, 1)])
def test_importance_equals_the_reference_on_ragged_gqa_batches(seed, heads):
    lengths = ragged_lengths(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    q = torch.randn(sum(lengths), heads[0], 16, generator=gen)
    k = torch.randn(sum(lengths), heads[1], 16, generator=gen)
    args = dict(sm_scale=0.25, max_m=max(lengths))
    got = importance(q, k, offsets(lengths), backend="torch", **args)
    want = importance(q, k, offsets(lengths), backend="reference", **args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_importance_chunks_give_the_same_result_as_one_chunk(monkeypatch):
    """Requests are scored in cache-sized chunks; the chunk size must not change any value."""
    from sglang_focus.kernels import batched

    lengths = ragged_lengths(3)
    gen = torch.Generator().manual_seed(5)
    q, k = torch.randn(sum(lengths), 8, 16, generator=gen), torch.randn(sum(lengths), 2, 16, generator=gen)
    args = dict(sm_scale=0.25, max_m=max(lengths), backend="torch")
    whole = importance(q, k, offsets(lengths), **args)
    monkeypatch.setattr(batched, "SCORE_CHUNK_ELEMENTS", 1)  # one request per chunk
    torch.testing.assert_close(importance(q, k, offsets(lengths), **args), whole, rtol=1e-6, atol=1e-6)


def test_importance_pool_ignores_padding_keys():
    """A padded key must neither receive mass nor lend its neighbour's score: sums stay H * m per request."""
    lengths = [3, 7]
    q, k = torch.randn(10, 2, 8), torch.randn(10, 2, 8)
    got = importance(q, k, offsets(lengths), sm_scale=1.0, max_m=16, backend="torch")
    assert got.shape == (10,)
    torch.testing.assert_close(got[:3].sum(), torch.tensor(6.0))
    torch.testing.assert_close(got[3:].sum(), torch.tensor(14.0))


def select_batch(seed, num_req=12):
    gen = torch.Generator().manual_seed(seed)
    lengths = ragged_lengths(seed, num_req)
    lengths_t = torch.tensor(lengths)
    return dict(
        delta=torch.randn(sum(lengths), generator=gen),
        positions=torch.cat([torch.randperm(BLOCK, generator=gen)[:m].sort().values for m in lengths]).to(torch.int32),
        cu_seqlens=offsets(lengths),
        target=torch.minimum(torch.randint(0, 6, (num_req,), generator=gen), lengths_t).to(torch.int32),
        evict=torch.rand(num_req, generator=gen) < 0.8,
        progress=torch.randint(-1, BLOCK, (num_req,), generator=gen).to(torch.int32),
    ), max(lengths)


@pytest.mark.parametrize("seed", range(16))
def test_select_enforce_equals_the_reference_on_tie_free_inputs(seed):
    batch, max_m = select_batch(seed)
    got = select_enforce(**batch, max_m=max_m, backend="torch")
    want = select_enforce(**batch, max_m=max_m, backend="reference")
    assert torch.equal(got, want)


def test_select_enforce_ties_match_the_reference():
    """Quantised deltas: many exact ties at the top-t and 1-sigma boundaries."""
    for seed in range(8):
        batch, max_m = select_batch(seed)
        batch["delta"] = torch.round(batch["delta"] * 2) / 2
        assert torch.equal(select_enforce(**batch, max_m=max_m, backend="torch"),
                           select_enforce(**batch, max_m=max_m, backend="reference"))
