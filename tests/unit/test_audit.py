"""The eviction audit on the host: which steps are audited, what an audited step counts, how the counts add up in
the stats and metrics, and the selection replay that predicts them.

Real servers (the audited forward equal to the delayed-only arm, recall equal to the replay) are in
tests/e2e/test_eviction_audit.py.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import msgspec
import pytest
import torch

from sglang_focus import stats
from sglang_focus.analysis import selection as sel
from sglang_focus.config import FocusConfig
from sglang_focus.forward.plan import plan_step
from sglang_focus.patches.dllm_mixin_scheduler import record_focus_stats
from sglang_focus.stats import AuditStats, FocusStats
from sglang_focus.structs import FocusReqState
from sglang_focus.unmasking.algorithm import Focus, _add_audit_deltas, _step_deltas

BLOCK = 8


def audit_schedule(audit_every: int, evicting: list[bool]) -> list[bool]:
    """Which of a sequence of steps (evicting or not) one algorithm object audits."""
    algorithm = SimpleNamespace(focus_config=FocusConfig(audit_every=audit_every), evicting_steps=0)
    return [Focus._audit_due(algorithm, SimpleNamespace(eviction=object() if e else None)) for e in evicting]


def test_every_nth_evicting_step_is_audited_and_non_evicting_steps_do_not_count():
    evicting = [True, False, True, True, False, True, True, True]
    assert audit_schedule(3, evicting) == [False, False, False, True, False, False, False, True]
    assert audit_schedule(1, evicting) == evicting


def test_audit_every_zero_audits_nothing():
    assert not any(audit_schedule(0, [True] * 10))


def evicting_plan():
    """Two requests of a 8-token block after one step: request 0 may evict (3 of 6 masked kept at most), request 1
    holds 2 masked positions under a budget of 2 (no eviction)."""
    masked = torch.tensor([[False, False, True, True, True, True, True, True],
                           [False] * 6 + [True, True]])
    states = [FocusReqState(uncached=[False, True] + [True] * 6, steps=1, progress=7, unmasked=2, decoding_steps=1),
              FocusReqState(uncached=[False] * 5 + [True] * 3, steps=3, progress=7, unmasked=6, decoding_steps=3)]
    plan = plan_step(states, masked, torch.tensor([16, 32]), [1.5, 1.5], delayed_cache=True,
                     device=torch.device("cpu"))
    assert plan.eviction is not None and plan.eviction.evict_cpu.tolist() == [True, False]
    return plan, masked


def test_an_audited_step_counts_decoded_tokens_outside_the_keep_set_of_evicting_requests_only():
    plan, masked = evicting_plan()
    inp = plan.eviction
    rows = list(zip(inp.row_req.tolist(), inp.row_pos.tolist()))
    # FOCUS would keep positions 2 and 5 of request 0 (and every row of request 1).
    keep = torch.tensor([r == 1 or p in (1, 2, 5) for r, p in rows])
    decoded = torch.zeros_like(masked)
    decoded[0, [2, 3, 4]] = True  # 3 decoded, 2 of them (3, 4) outside the keep set
    decoded[1, 7] = True  # request 1 does not evict: not counted
    deltas = _step_deltas(plan, plan.row_counts, decoded.sum(dim=1))
    _add_audit_deltas(deltas, plan, keep, decoded)
    assert [d["audit"] for d in deltas] == [{"steps": 1, "decodable": 3, "evicted_decodable": 2},
                                            {"steps": 0, "decodable": 0, "evicted_decodable": 0}]


def test_steps_not_audited_add_zero_audit_counts():
    plan, masked = evicting_plan()
    deltas = _step_deltas(plan, plan.row_counts, masked.sum(dim=1))
    _add_audit_deltas(deltas, plan, None, masked)
    assert all(d["audit"] == dict.fromkeys(stats.AUDIT_FIELDS, 0) for d in deltas)


def test_recall_is_the_kept_share_of_decodable_tokens_and_undefined_before_any():
    assert AuditStats(steps=2, decodable=8, evicted_decodable=2).recall == 0.75
    assert AuditStats().recall is None
    assert (AuditStats(steps=1, decodable=3, evicted_decodable=1) + AuditStats(steps=1, decodable=5)
            == AuditStats(steps=2, decodable=8, evicted_decodable=1))


def test_summary_without_audit_is_unchanged_and_with_audit_adds_one_key():
    counts = dict(forwards=4, processed=40, kept=22, evicted=18, masked=30, unmasked=10)
    plain = FocusStats(**counts).summary()
    assert list(plain) == [*stats.COUNT_FIELDS, "kept_ratio", "masked_kept_ratio", "tokens_per_forward"]
    audited = FocusStats(**counts, audit=AuditStats(steps=1, decodable=4, evicted_decodable=1)).summary()
    assert {k: v for k, v in audited.items() if k != "audit"} == plain
    assert audited["audit"] == {"steps": 1, "decodable": 4, "evicted_decodable": 1, "recall": 0.75}


def step(audit=None, **counts):
    delta = {"forwards": 1, "processed": 8, "kept": 8, "evicted": 0, "masked": 4, "unmasked": 2, **counts}
    return delta if audit is None else {**delta, "audit": dict(zip(stats.AUDIT_FIELDS, audit))}


def scheduler(metrics=False, labels=None):
    collector = SimpleNamespace(labels=labels or {}) if metrics else None
    return SimpleNamespace(metrics_reporter=SimpleNamespace(current_scheduler_metrics_enabled=metrics,
                                                            metrics_collector=collector))


def test_request_totals_sum_the_audit_counts_across_forwards():
    batch = SimpleNamespace(reqs=[SimpleNamespace(customized_info=None)])
    for audit in ((1, 3, 1), (0, 0, 0), (1, 2, 0)):
        record_focus_stats(scheduler(), batch, SimpleNamespace(logits_output=SimpleNamespace(
            customized_info={"focus_step": [step(audit)]})))
    summary = batch.reqs[0].customized_info["focus_stats"][0]
    assert summary["forwards"] == 3
    assert summary["audit"] == {"steps": 2, "decodable": 5, "evicted_decodable": 1, "recall": 0.8}


def test_audit_counts_must_be_integers():
    with pytest.raises(msgspec.ValidationError):
        stats.parse_delta({**step(), "audit": {"steps": 1, "decodable": 1.5, "evicted_decodable": 0}})


def test_audit_counters_count_the_audited_batches():
    from prometheus_client import REGISTRY

    # The process has one FocusMetrics, labelled by its first user: the labels of tests/unit/test_stats.py.
    labels = {"model_name": "tiny", "tp_rank": 0}
    names = ["sglang:focus_audited_steps_total", "sglang:focus_audit_decodable_tokens_total",
             "sglang:focus_audit_evicted_decodable_tokens_total"]

    def values():
        return [REGISTRY.get_sample_value(n, {"model_name": "tiny", "tp_rank": "0"}) or 0.0 for n in names]

    def record(*deltas, metrics=True):
        batch = SimpleNamespace(reqs=[SimpleNamespace(customized_info=None) for _ in deltas])
        record_focus_stats(scheduler(metrics, labels), batch,
                           SimpleNamespace(logits_output=SimpleNamespace(customized_info={"focus_step": list(deltas)})))

    record(step((1, 1, 0)))  # creates the process's counters if no earlier test did
    before = values()
    record(step((1, 4, 1)), step((0, 0, 0)))
    record(step((1, 3, 3)), metrics=False)
    assert [v - b for v, b in zip(values(), before)] == [1, 4, 1]


def trajectory(seed: int, requests: int = 4) -> list[sel.StepRecord]:
    rng = random.Random(seed)
    steps = []
    for r in range(requests):
        for b in range(2):
            masked, index = list(range(BLOCK)), 0
            while masked:
                chosen = set(rng.sample(masked, min(len(masked), rng.randint(1, 3))))
                steps.append(sel.StepRecord(r, "t", b * BLOCK, index, b == 0 and index == 0, list(masked),
                                            [rng.gauss(0, 1) for _ in masked], [p in chosen for p in masked]))
                masked, index = [p for p in masked if p not in chosen], index + 1
    return steps


def test_replay_on_an_unevicted_trajectory_uses_its_progress():
    """An audited server processed the whole block at every step: progress -1 on a block's first step, B-1 after."""
    for s in sel.replay(trajectory(0), progress_of="trajectory", block_size=BLOCK):
        assert s.progress == (-1 if s.step.block_step == 0 else BLOCK - 1)
    focus_progress = [s.progress for s in sel.replay(trajectory(0))]
    assert any(-1 < p < BLOCK - 1 for p in focus_progress), "the two progress models must differ on this trajectory"


def test_replayed_audit_counts_cover_the_evicting_steps_only():
    selections = sel.replay(trajectory(1), progress_of="trajectory", block_size=BLOCK)
    counts = sel.audit_counts(selections)
    evicting = [s for s in selections if s.evicts]
    assert sum(c["steps"] for c in counts.values()) == len(evicting) > 0
    metrics = sel.selector_metrics(evicting, "focus")
    decodable = sum(c["decodable"] for c in counts.values())
    evicted = sum(c["evicted_decodable"] for c in counts.values())
    assert decodable == sum(sum(s.step.decoded) for s in evicting)
    assert 1 - evicted / decodable == pytest.approx(metrics["decodable_recall"])
    assert evicted > 0, "random deltas must make FOCUS evict some decoded token"
