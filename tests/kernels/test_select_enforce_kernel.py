"""Select + enforce (FOCUS_SPEC §4.6–4.7, §10.4–10.7, §10.14): Triton kernel and reference keep sets."""

import itertools

import pytest
import torch

from sglang_focus.kernels import rightmost_kept, select_enforce

BLOCK = 32
BACKENDS = ["triton", "torch", "reference"]


def offsets(lengths, device):
    return torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32, device=device)


def random_batch(seed, device, num_req=10):
    """Tie-free random requests: sorted block positions with gaps, lengths incl. 0, 1 and BLOCK."""
    gen = torch.Generator().manual_seed(seed)
    lengths = [0, 1, BLOCK] + torch.randint(0, BLOCK + 1, (num_req - 3,), generator=gen).tolist()
    positions = [torch.randperm(BLOCK, generator=gen)[:m].sort().values for m in lengths]
    lengths_t = torch.tensor(lengths)
    batch = dict(
        delta=torch.randn(sum(lengths), generator=gen),
        positions=torch.cat(positions).to(torch.int32),
        cu_seqlens=offsets(lengths, "cpu"),
        target=torch.minimum(torch.randint(0, 5, (num_req,), generator=gen), lengths_t).to(torch.int32),
        evict=torch.rand(num_req, generator=gen) < 0.8,
        progress=torch.randint(-1, BLOCK, (num_req,), generator=gen).to(torch.int32),
    )
    return lengths, {name: x.to(device) for name, x in batch.items()}


def run(backend, batch):
    return select_enforce(**batch, max_m=BLOCK, backend=backend).cpu()


def one_request(delta, positions, target, progress, evict=True, device="cpu"):
    return dict(
        delta=torch.tensor(delta, dtype=torch.float32, device=device),
        positions=torch.tensor(positions, dtype=torch.int32, device=device),
        cu_seqlens=offsets([len(delta)], device),
        target=torch.tensor([target], dtype=torch.int32, device=device),
        evict=torch.tensor([evict], device=device),
        progress=torch.tensor([progress], dtype=torch.int32, device=device),
    )


def kept_indices(keep):
    return torch.nonzero(keep).flatten().tolist()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_triton_keep_set_equals_reference_on_tie_free_inputs(device, seed):
    _, batch = random_batch(seed, device)
    assert torch.equal(run("triton", batch), run("torch", batch))


def test_int64_positions_give_the_same_keep_set(device):
    _, batch = random_batch(5, device, num_req=4)
    batch["positions"] = batch["positions"].long()
    assert torch.equal(run("triton", batch), run("torch", batch))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [3, 4])
def test_keep_set_properties_on_random_requests(device, backend, seed):
    lengths, batch = random_batch(seed, device)
    keep = run(backend, batch)
    cpu = {name: x.cpu() for name, x in batch.items()}
    for r, (start, m) in enumerate(zip(cpu["cu_seqlens"].tolist(), lengths)):
        delta, pos, kept = cpu["delta"][start : start + m], cpu["positions"][start : start + m], keep[start : start + m]
        if m == 0:
            continue
        assert kept.any(), "keep set empty"
        if not cpu["evict"][r]:
            assert kept.all(), "a request without eviction lost a candidate"
            continue
        t = min(max(int(cpu["target"][r]), 1), m)
        mu = delta.mean()
        sigma_set = delta >= mu + ((delta - mu) ** 2).mean().sqrt()
        top_t = torch.zeros(m, dtype=torch.bool)
        top_t[delta.topk(t).indices] = True
        assert int((sigma_set | top_t).sum()) >= t
        assert not (sigma_set & ~kept).any(), "a 1-sigma candidate was evicted"
        assert not (top_t & ~kept).any(), "a top-t candidate was evicted"
        right = int(pos[kept].max())
        gap = (pos > int(cpu["progress"][r])) & (pos < right)
        assert not (gap & ~kept).any(), "a candidate between progress and the rightmost kept position was evicted"


@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_worked_example_left_neighbour(device, backend):
    keep = run(backend, one_request([0, 0, 10, 10], [0, 1, 2, 3], target=1, progress=3, device=device))
    assert kept_indices(keep) == [1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_worked_example_gap_fill_keeps_all(device, backend):
    keep = run(backend, one_request([0, 0, 0, 10], [0, 1, 2, 3], target=1, progress=-1, device=device))
    assert kept_indices(keep) == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_neighbour_rule_is_not_transitive(device, backend):
    keep = run(backend, one_request([0, 0, 0, 0, 10], [0, 1, 2, 3, 4], target=1, progress=4, device=device))
    assert kept_indices(keep) == [3, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_left_neighbour_rule_uses_block_positions_not_list_index(device, backend):
    """List neighbours at positions 0 and 2 are not physical neighbours, so position 0 is evicted."""
    keep = run(backend, one_request([0, 10], [0, 2], target=1, progress=2, device=device))
    assert kept_indices(keep) == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_t_ties_go_to_the_lower_list_index(device, backend):
    """C = {9}; the second slot goes to index 0, not to its tie at index 1 (gapped positions, no gap fill)."""
    delta = [1, 1, 0, 0, 0, 0, 0, 0, 0, 10]
    keep = run(backend, one_request(delta, list(range(0, 20, 2)), target=2, progress=100, device=device))
    assert kept_indices(keep) == [0, 9]


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_eviction_keeps_everything(device, backend):
    keep = run(backend, one_request([5, -1, 0, 2], [3, 4, 8, 9], target=1, progress=-1, evict=False, device=device))
    assert keep.all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_target_zero_is_clamped_to_one(device, backend):
    keep = run(backend, one_request([0.5, 3.0, 0.25], [0, 2, 4], target=0, progress=10, device=device))
    assert kept_indices(keep) == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_requests_and_empty_batch(device, backend):
    batch = dict(one_request([], [], target=0, progress=-1, evict=False, device=device))
    assert run(backend, batch).shape == (0,)
    no_requests = {**batch, "cu_seqlens": offsets([], device)}
    for name in ("target", "evict", "progress"):
        no_requests[name] = batch[name][:0]
    assert run(backend, no_requests).shape == (0,)


def test_rightmost_kept_per_request():
    keep = torch.tensor([True, False, False, False, True, True])
    positions = torch.tensor([4, 6, 1, 2, 7, 9], dtype=torch.int32)
    got = rightmost_kept(keep, positions, offsets([2, 2, 0, 2], "cpu"))
    assert got.tolist() == [4, -1, -1, 9] and got.dtype == torch.int32
