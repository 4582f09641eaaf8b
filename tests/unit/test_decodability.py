"""The decodability study: its statistics and the invariants of what it records, on a small random SDAR."""

from __future__ import annotations

import itertools
import json
import random
from argparse import Namespace

import pytest
import torch

from sglang_focus.training import tasks
from sglang_focus.analysis import decodability as dec
from sglang_focus.training.train import SdarLM, export_checkpoint, model_config, prepare_tokenizer


def brute_force_auc(scores, labels):
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_counting_with_ties(seed):
    rng = random.Random(seed)
    scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(60)]
    labels = [rng.random() < 0.4 for _ in scores]
    assert dec.roc_auc(scores, labels) == pytest.approx(brute_force_auc(scores, labels))


def test_roc_auc_extremes_and_single_class():
    assert dec.roc_auc([0.1, 0.2, 0.9, 0.8], [False, False, True, True]) == 1.0
    assert dec.roc_auc([0.1, 0.2, 0.9, 0.8], [True, True, False, False]) == 0.0
    assert dec.roc_auc([0.1, 0.2], [True, True]) is None


def test_roc_curve_ends_at_one_one():
    fpr, tpr = dec.roc_curve([0.3, 0.1, 0.7, 0.5], [True, False, True, False])
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert fpr == sorted(fpr) and tpr == sorted(tpr)


def step(request, index, decoded_flags, deltas):
    return [dec.TokenStep(request, "sort", index, pos, len(deltas), 0.0, d, d, flag, 0, index, False)
            for pos, (flag, d) in enumerate(zip(decoded_flags, deltas))]


def test_leftmost_baseline_ranks_by_position():
    rows = step(0, 0, [True, True, False, False], [0.0, 0.1, 0.9, 0.8])
    assert dec.within_step_auc(rows, "leftmost") == 1.0 and dec.within_step_auc(rows, "delta") == 0.0


def test_tokens_per_forward_counts_the_commit_forward_of_every_block():
    decodings = [dec.Decoding("sort", True, decoded=32, steps=6, blocks=2), dec.Decoding("sort", False, 16, 2, 1)]
    rates = dec.decoding_rates(decodings, block_size=16)
    assert rates["tokens_per_step"] == 48 / 8 and rates["tokens_per_forward"] == 48 / 11
    assert rates["block_share_per_forward"] == pytest.approx(48 / 11 / 16)


def test_top_k_recall_and_its_chance_level():
    rows = step(0, 0, [True, False, False, False], [0.9, 0.1, 0.2, 0.3])  # top-1 by delta is the decoded one
    rows += step(0, 1, [False, True, True], [0.9, 0.1, 0.5])  # top-2 = {0, 2}: one of two decoded tokens hit
    assert dec.top_k_recall(rows, "delta") == pytest.approx(2 / 3)
    assert dec.chance_top_k_recall(rows) == pytest.approx((1 * 1 / 4 + 2 * 2 / 3) / 3)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("random-sdar")
    torch.manual_seed(0)
    tokenizer, special = prepare_tokenizer(out, suite="tasks-v1", seed=0, reuse=False)
    args = Namespace(heads=4, kv_heads=2, head_dim=0, hidden=64, layers=3, intermediate=0, block_size=16,
                     task_suite="tasks-v1")
    model = SdarLM(model_config(args, tokenizer.get_vocab_size(), special))
    for layer in model.model.layers:  # peaked attention so importances are not all equal
        layer.self_attn.q_norm.weight.data.fill_(4.0)
    export_checkpoint(model, out)
    return out


def test_study_records_every_masked_token_once_per_step_with_spec_invariants(random_checkpoint, tmp_path):
    torch.set_num_threads(1)
    summary = dec.main(["--model-path", str(random_checkpoint), "--n", "3", "--max-new-tokens", "32",
                        "--threads", "1", "--out", str(tmp_path)])
    rows = [line.split(",") for line in (tmp_path / "steps.csv").read_text().splitlines()[1:]]
    assert len(rows) == summary["tokens"] > 0
    heads = json.loads((random_checkpoint / "config.json").read_text())["num_attention_heads"]
    by_step = {}
    for r in rows:
        by_step.setdefault((int(r[0]), int(r[2])), []).append(r)
    for group in by_step.values():
        m = int(group[0][4])
        assert len(group) == m, "one row per masked candidate"
        assert any(r[8] == "True" for r in group), "every step decodes at least one token"
        for col in (5, 6):  # each softmax row sums to 1, so the importances of a step sum to H * m
            assert sum(float(r[col]) for r in group) == pytest.approx(heads * m, rel=1e-4)
        assert sum(float(r[7]) for r in group) == pytest.approx(0.0, abs=1e-3)
    assert set(summary) >= {"delta", "i0", "i1", "leftmost", "accuracy", "chance_top_k_recall", "tokens_per_forward",
                            "per_task"}
    assert 0.0 <= summary["delta"]["roc_auc"] <= 1.0
    assert 0 < summary["tokens_per_forward"] < summary["tokens_per_step"]
    for name in dec.OUTPUTS:
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "decodability.png").stat().st_size > 10_000
    assert (tmp_path / "selection.png").stat().st_size > 10_000
    replayed = json.loads((tmp_path / "selection.json").read_text())["budget_reset"]
    assert set(replayed) == {"block", "request"}
    for result in replayed.values():
        assert result["by_task"]["all"]["oracle"]["decodable_recall"] == 1.0


def test_bad_model_path_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        dec.main(["--model-path", str(tmp_path)])
    assert "no model.safetensors" in capsys.readouterr().err


def test_problems_come_from_the_heldout_split():
    assert all(tasks.split_of(p.key) == "heldout" for p in tasks.generate("heldout", 20, seed="0"))
