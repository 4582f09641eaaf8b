"""Importance scoring (FOCUS_SPEC §4.3, §10.1–10.3, §10.14): Triton kernel, PyTorch reference and a naive loop."""

import itertools
import math

import pytest
import torch

from sglang_focus.kernels import importance
from sglang_focus.kernels.reference import importance_reference

RAGGED_LENGTHS = [3, 0, 1, 13, 0, 32, 2]  # empty, one-token, non-power-of-2 and full-tile requests
HEAD_DIM = 24  # not a power of two: exercises the masked head-dim tail


def offsets(lengths: list[int], device: str) -> torch.Tensor:
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def random_qk(lengths, num_heads, num_kv_heads, head_dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, num_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(total, num_kv_heads, head_dim, generator=gen).to(device=device, dtype=dtype)
    return q, k


def naive_importance(q, k, lengths, sm_scale, neighbours):
    """Independent per-request, per-head, per-query loop. ``neighbours(b, m)`` lists the keys pooled into ``b``."""
    q, k = q.double().cpu(), k.double().cpu()
    group = q.shape[1] // k.shape[1]
    out, start = [], 0
    for m in lengths:
        total = [0.0] * m
        for h, a in itertools.product(range(q.shape[1]), range(m)):
            scores = [float(q[start + a, h] @ k[start + b, h // group]) * sm_scale for b in range(m)]
            pooled = [max(scores[c] for c in neighbours(b, m)) for b in range(m)]
            top = max(pooled)
            weights = [math.exp(s - top) for s in pooled]
            for b in range(m):
                total[b] += weights[b] / sum(weights)
        out.extend(total)
        start += m
    return torch.tensor(out, dtype=torch.float64)


def list_neighbours(b: int, m: int) -> list[int]:
    return [c for c in (b - 1, b, b + 1) if 0 <= c < m]


@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 4)])
def test_reference_matches_naive_loop_on_ragged_batch(num_heads, num_kv_heads):
    lengths = [3, 0, 1, 6]
    q, k = random_qk(lengths, num_heads, num_kv_heads, HEAD_DIM, torch.float32, "cpu")
    got = importance_reference(q, k, offsets(lengths, "cpu"), sm_scale=HEAD_DIM**-0.5)
    want = naive_importance(q, k, lengths, HEAD_DIM**-0.5, list_neighbours)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_heads,num_kv_heads", [(4, 2), (4, 4)])
def test_triton_matches_reference(device, dtype, num_heads, num_kv_heads):
    q, k = random_qk(RAGGED_LENGTHS, num_heads, num_kv_heads, HEAD_DIM, dtype, device)
    cu_seqlens = offsets(RAGGED_LENGTHS, device)
    got = importance(q, k, cu_seqlens, sm_scale=HEAD_DIM**-0.5, max_m=max(RAGGED_LENGTHS), backend="triton")
    want = importance_reference(q, k, cu_seqlens, sm_scale=HEAD_DIM**-0.5)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_triton_handles_head_dim_over_one_chunk_and_strided_views(device):
    """q and k as head slices of one fused qkv buffer (row stride > H·d), head_dim spanning two chunks."""
    lengths, head_dim, num_heads, num_kv_heads = [5, 0, 9], 80, 4, 2
    qkv = torch.randn(sum(lengths), num_heads + 2 * num_kv_heads, head_dim, device=device)
    q, k = qkv[:, :num_heads], qkv[:, num_heads : num_heads + num_kv_heads]
    cu_seqlens = offsets(lengths, device)
    got = importance(q, k, cu_seqlens, sm_scale=head_dim**-0.5, max_m=9, backend="triton")
    want = importance_reference(q, k, cu_seqlens, sm_scale=head_dim**-0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["triton", "torch", "reference"])
def test_each_request_sums_to_heads_times_candidates(device, backend):
    num_heads = 4
    q, k = random_qk(RAGGED_LENGTHS, num_heads, 2, HEAD_DIM, torch.float32, device)
    cu_seqlens = offsets(RAGGED_LENGTHS, device)
    got = importance(q, k, cu_seqlens, sm_scale=HEAD_DIM**-0.5, max_m=32, backend=backend).cpu()
    sums = torch.stack([part.sum() for part in got.split(RAGGED_LENGTHS)])
    torch.testing.assert_close(sums, num_heads * torch.tensor(RAGGED_LENGTHS, dtype=torch.float32))


def test_delta_of_two_layers_sums_to_zero_per_request(device):
    cu_seqlens = offsets(RAGGED_LENGTHS, device)
    layers = [random_qk(RAGGED_LENGTHS, 4, 2, HEAD_DIM, torch.bfloat16, device, seed=s) for s in (1, 2)]
    i0, i1 = (importance(q, k, cu_seqlens, sm_scale=0.2, max_m=32, backend="triton") for q, k in layers)
    for part in (i1 - i0).cpu().split(RAGGED_LENGTHS):
        assert abs(float(part.sum())) <= 1e-4 * max(len(part), 1)


def test_one_candidate_gets_all_the_mass_of_every_head(device):
    q, k = random_qk([1, 1], 4, 2, HEAD_DIM, torch.float16, device)
    got = importance(q, k, offsets([1, 1], device), sm_scale=1.0, max_m=1, backend="triton")
    assert got.tolist() == [4.0, 4.0]


@pytest.mark.parametrize("lengths", [[], [0, 0]])
def test_empty_batch_gives_empty_output(device, lengths):
    q, k = random_qk(lengths, 4, 2, HEAD_DIM, torch.float32, device)
    for backend in ("triton", "torch", "reference"):
        got = importance(q, k, offsets(lengths, device), sm_scale=1.0, max_m=0, backend=backend)
        assert got.shape == (0,) and got.dtype == torch.float32


def test_pool_runs_over_list_neighbours_not_block_positions(device):
    """Candidates at block positions 0, 1, 5, 6, 9: list neighbours 1 and 5 pool together, position neighbours do
    not. A large sm_scale makes the two pools clearly different."""
    positions = [0, 1, 5, 6, 9]
    q, k = random_qk([len(positions)], 2, 1, 8, torch.float32, device, seed=3)

    def position_neighbours(b, m):
        return [c for c in range(m) if abs(positions[c] - positions[b]) <= 1]

    got = importance(q, k, offsets([5], device), sm_scale=3.0, max_m=5, backend="triton").cpu().double()
    torch.testing.assert_close(got, naive_importance(q, k, [5], 3.0, list_neighbours), rtol=1e-5, atol=1e-5)
    by_position = naive_importance(q, k, [5], 3.0, position_neighbours)
    assert (got - by_position).abs().max() > 1e-2


def test_triton_is_bitwise_reproducible(device):
    q, k = random_qk(RAGGED_LENGTHS, 4, 2, HEAD_DIM, torch.bfloat16, device)
    cu_seqlens = offsets(RAGGED_LENGTHS, device)
    runs = [importance(q, k, cu_seqlens, sm_scale=0.2, max_m=32, backend="triton") for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
