"""FOCUS under attention TP (spec §12.3, §10.15): heads split over simulated ranks, as SGLang's attention layers
split them, give the single-rank importance once summed, hence the same keep set on every rank; the keep-set check
names disagreeing ranks; one rank wide, nothing communicates."""

from __future__ import annotations

import pytest
import torch

from sglang_focus import envs
from sglang_focus.forward.plan import plan_step
from sglang_focus.forward.retain import candidate_importance, plan_retention
from sglang_focus.forward.tensor_parallel import (AttentionTP, all_heads_importance, attention_tp,
                                                  check_keep_agreement, keep_fingerprint)
from sglang_focus.structs import FocusReqState

BLOCK, HEAD_DIM = 16, 8


def eviction_input(seed: int, bs: int = 4):
    """A mid-block step of `bs` requests with ragged candidate lists (one request without candidates)."""
    gen = torch.Generator().manual_seed(seed)
    masked = torch.rand(bs, BLOCK, generator=gen) < 0.7
    masked[0] = False  # m = 0: nothing to score
    masked[1, -5:] = True  # at least a few candidates
    states = [FocusReqState(uncached=[True] * BLOCK, steps=2, progress=BLOCK - 1, unmasked=3, decoding_steps=2)
              for _ in range(bs)]
    plan = plan_step(states, masked, torch.tensor([0, 16, 48, 32][:bs]), [1.5] * bs, delayed_cache=True,
                     device=torch.device("cpu"))
    assert plan.eviction is not None
    return plan.eviction, int(plan.rows.shape[0])


def rank_shard(q, k, *, rank: int, tp: int, heads: int, kv_heads: int):
    """Rank `rank`'s q [n, H/tp·d] and k [n, H_kv/tp·d] (KV heads replicated when tp > H_kv), as SGLang's
    QKVParallelLinear shards them: contiguous query heads and the KV heads their GQA groups read."""
    group = heads // kv_heads
    local_heads = heads // tp
    first_head = rank * local_heads
    first_kv, last_kv = first_head // group, (first_head + local_heads - 1) // group
    local_kv = last_kv - first_kv + 1
    assert local_kv == max(1, kv_heads // tp)
    for j in range(local_heads):  # the local GQA map reads the same KV head as the global one
        assert first_kv + j // (local_heads // local_kv) == (first_head + j) // group
    q_local = q.view(-1, heads, HEAD_DIM)[:, first_head:first_head + local_heads].reshape(q.shape[0], -1)
    k_local = k.view(-1, kv_heads, HEAD_DIM)[:, first_kv:last_kv + 1].reshape(k.shape[0], -1)
    return q_local, k_local, {"num_heads": local_heads, "num_kv_heads": local_kv, "head_dim": HEAD_DIM}


def rank_importance(q, k, inp, **shard) -> torch.Tensor:
    """What `candidate_importance` computes on one rank, from that rank's heads only."""
    q_local, k_local, head_shape = rank_shard(q, k, **shard)
    return candidate_importance(q_local, k_local, inp, **head_shape)


def layer_qk(gen, rows: int, heads: int, kv_heads: int):
    return torch.randn(rows, heads * HEAD_DIM, generator=gen), torch.randn(rows, kv_heads * HEAD_DIM, generator=gen)


class SimulatedAllReduce:
    """SGLang's GroupCoordinator.all_reduce for ranks simulated in one process: every rank's input is known up
    front, and each call returns their sum (in rank order, so every rank gets identical values)."""

    def __init__(self, contributions: list[torch.Tensor]):
        self.contributions = contributions
        self.calls = 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        assert any(torch.equal(tensor, c) for c in self.contributions), "not one of the ranks' inputs"
        return torch.stack(self.contributions).sum(dim=0)


class GatheredObjects:
    """GroupCoordinator.all_gather_object returning fixed per-rank objects, with this rank's own at `rank`."""

    def __init__(self, others: list, rank: int = 0):
        self.others, self.rank = others, rank

    def all_gather_object(self, obj):
        return [*self.others[:self.rank], obj, *self.others[self.rank:]]


@pytest.mark.parametrize(("heads", "kv_heads", "tp"), [(4, 2, 2), (8, 2, 2), (4, 1, 2), (8, 4, 4)],
                         ids=["gqa", "gqa4", "replicated_kv", "tp4"])
@pytest.mark.parametrize("seed", range(4))
def test_summed_per_rank_importance_equals_all_heads_and_keeps_the_same_rows(heads, kv_heads, tp, seed):
    inp, rows = eviction_input(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    layers = [layer_qk(gen, rows, heads, kv_heads) for _ in range(2)]  # layer 0, layer 1
    full = {"num_heads": heads, "num_kv_heads": kv_heads, "head_dim": HEAD_DIM}
    single = [candidate_importance(q, k, inp, **full) for q, k in layers]
    partial = [[rank_importance(q, k, inp, rank=r, tp=tp, heads=heads, kv_heads=kv_heads) for q, k in layers]
               for r in range(tp)]
    group = SimulatedAllReduce([torch.stack(p) for p in partial])
    summed = [all_heads_importance(i0, i1, AttentionTP(group=group, check_keep=False)) for i0, i1 in partial]
    assert group.calls == tp, "one all-reduce per rank and step"
    for i0, i1 in summed:
        assert i0.dtype == i1.dtype == torch.float32
        assert torch.allclose(i0, single[0], rtol=1e-5, atol=1e-5)
        assert torch.allclose(i1, single[1], rtol=1e-5, atol=1e-5)
        assert torch.equal(i0, summed[0][0]) and torch.equal(i1, summed[0][1]), "ranks hold identical values"
    reference = plan_retention(single[1] - single[0], inp).kept_rows
    kept = [plan_retention(i1 - i0, inp).kept_rows for i0, i1 in summed]
    assert all(torch.equal(rows_kept, reference) for rows_kept in kept)
    assert reference.shape[0] < rows, "the step evicts"


def test_all_reduce_leaves_the_ranks_importances_unchanged():
    i0, i1 = torch.rand(5), torch.rand(5)
    before = (i0.clone(), i1.clone())

    class InPlaceSum:  # as SGLang's CPU all-reduce: in place, returning its input
        def all_reduce(self, tensor):
            return tensor.mul_(2)

    summed = all_heads_importance(i0, i1, AttentionTP(group=InPlaceSum(), check_keep=False))
    assert torch.equal(i0, before[0]) and torch.equal(i1, before[1])
    assert torch.equal(summed[0], 2 * before[0]) and torch.equal(summed[1], 2 * before[1])


def test_one_rank_runs_no_collective():
    i0, i1 = torch.rand(5), torch.rand(5)
    assert all_heads_importance(i0, i1, None) == (i0, i1)


@pytest.fixture
def fresh_attention_tp():
    attention_tp.cache_clear()
    yield
    attention_tp.cache_clear()


def test_attention_tp_is_sglangs_attention_group_and_none_when_one_rank_wide(fresh_attention_tp, monkeypatch):
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(attn_tp_size=1):
        assert attention_tp() is None
    attention_tp.cache_clear()
    monkeypatch.setenv(envs.CHECK_TP_KEEP_ENV, "1")
    group = object()
    with get_parallel().override(attn_tp_size=2, attn_tp_group=group):
        assert attention_tp() == AttentionTP(group=group, check_keep=True)
    assert attention_tp() == AttentionTP(group=group, check_keep=True), "read once per process"


def test_the_keep_check_is_quiet_when_ranks_agree_and_names_the_ranks_that_differ():
    inp, rows = eviction_input(0)
    delta = torch.randn(inp.cand_rows.shape[0], generator=torch.Generator().manual_seed(1))
    plan = plan_retention(delta, inp)
    mine = tuple(keep_fingerprint(plan, inp))
    check_keep_agreement(plan, inp, GatheredObjects([mine, mine], rank=1))
    other = plan_retention(-delta, inp)
    assert not torch.equal(other.kept_rows, plan.kept_rows)
    theirs = tuple(keep_fingerprint(other, inp))
    with pytest.raises(RuntimeError, match=r"differ across attention-TP ranks: ranks \[2\] disagree with rank 0"):
        check_keep_agreement(plan, inp, GatheredObjects([mine, theirs], rank=1))
    with pytest.raises(RuntimeError, match=r"ranks \[1\] disagree with rank 0"):
        check_keep_agreement(plan, inp, GatheredObjects([theirs], rank=0))


def test_the_fingerprint_tells_keep_sets_apart_and_ignores_the_device_copy():
    inp, _ = eviction_input(2)
    delta = torch.randn(inp.cand_rows.shape[0], generator=torch.Generator().manual_seed(3))
    plan = plan_retention(delta, inp)
    same = plan._replace(kept_rows=plan.kept_rows.clone().to(torch.int32))
    assert keep_fingerprint(plan, inp) == keep_fingerprint(same, inp)
    fewer = plan._replace(kept_rows=plan.kept_rows[:-1])
    shifted = plan._replace(kept_rows=plan.kept_rows + 1)
    assert len({keep_fingerprint(p, inp) for p in (plan, fewer, shifted)}) == 3
    assert keep_fingerprint(plan, inp).candidates == inp.cand_rows.shape[0]

