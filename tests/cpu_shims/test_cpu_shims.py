"""The CPU stand-ins: sgl_kernel's KV helpers compute the right thing, and torchvision imports next to CPU torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

sgl_kernel = pytest.importorskip("sgl_kernel")
if not getattr(sgl_kernel, "__version__", "").endswith("cpu-standin"):
    pytest.skip("the real sgl_kernel is installed (GPU setup); the stand-in is CPU-only", allow_module_level=True)


def assign_naive(req_pool_indices, req_to_token, start, end, out_cache_loc):
    offset = 0
    for row, s, e in zip(req_pool_indices.tolist(), start.tolist(), end.tolist()):
        req_to_token[row, s:e] = out_cache_loc[offset:offset + e - s]
        offset += e - s


@pytest.mark.parametrize("lengths", [[3, 0, 5], [1], [0, 0], [16, 7, 2, 9]])
def test_assign_req_to_token_pool_matches_a_naive_loop(lengths):
    gen = torch.Generator().manual_seed(len(lengths))
    pool = torch.full((6, 40), -1, dtype=torch.int32)
    rows = torch.randperm(6, generator=gen)[: len(lengths)].to(torch.int64)
    start = torch.randint(0, 10, (len(lengths),), generator=gen)
    end = start + torch.tensor(lengths)
    locs = torch.randint(0, 1000, (sum(lengths),), generator=gen).to(torch.int64)
    expected = pool.clone()
    assign_naive(rows, expected, start, end, locs)
    sgl_kernel.assign_req_to_token_pool_cpu(rows, pool, start, end, locs, pool.shape[1])
    assert torch.equal(pool, expected)


def test_copy_all_layer_kv_cache_copies_every_buffer_slot():
    gen = torch.Generator().manual_seed(0)
    buffers = [torch.randn(12, 2, 4, generator=gen), torch.randn(12, 3, dtype=torch.float64, generator=gen),
               torch.randn(12, 8, generator=gen).to(torch.bfloat16)]
    before = [b.clone() for b in buffers]
    ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in buffers], dtype=torch.int64)
    src = torch.tensor([1, 2, 3, 9])
    tgt = torch.tensor([2, 3, 4, 0])  # overlapping: every source is read before any target is written
    sgl_kernel.copy_all_layer_kv_cache_cpu(ptrs, strides, tgt, src)
    for buf, old in zip(buffers, before):
        expected = old.clone()
        expected[tgt] = old[src]
        assert torch.equal(buf, expected)


def test_speculative_helpers_fail_loudly():
    with pytest.raises(NotImplementedError, match="speculative decoding is not supported"):
        sgl_kernel.verify_tree_greedy_cpu()


def test_torchvision_imports_with_cpu_torch():
    code = "import torchvision, torch; print(torchvision.__version__, torch.ops.torchvision.nms.default.name())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torchvision::nms" in out.stdout
