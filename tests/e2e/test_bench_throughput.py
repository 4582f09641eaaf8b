"""bench.throughput end to end on the small task model, models/sdar-tasks (small batches, all three arms), and its pure helpers."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import yaml

from sglang_focus.bench import arms
from sglang_focus.bench import throughput as bt

pytestmark = pytest.mark.e2e


def test_layer_bound_matches_the_formula():
    assert bt.layer_bound(8, 1.0) == pytest.approx(1.0)
    assert bt.layer_bound(36, 0.1) == pytest.approx(36 / (2 + 34 * 0.1))
    assert bt.layer_bound(36, 0.0) == pytest.approx(18.0)


def test_speedups_pair_each_focus_arm_with_stock_of_its_batch_size():
    records = [{"batch_size": 8, "arm": "stock", "output_throughput": 100.0, "kept_ratio": 1.0},
               {"batch_size": 8, "arm": "delayed", "output_throughput": 120.0, "kept_ratio": 1.0},
               {"batch_size": 8, "arm": "focus", "output_throughput": 150.0, "kept_ratio": 0.5},
               {"batch_size": 1, "arm": "stock", "output_throughput": 10.0, "kept_ratio": 1.0},
               {"batch_size": 2, "arm": "focus", "output_throughput": 10.0, "kept_ratio": 1.0}]
    delayed, focus = bt.speedups(records, num_layers=8)
    assert (delayed["batch_size"], delayed["arm"]) == (8, "delayed") and delayed["speedup"] == pytest.approx(1.2)
    assert delayed["bound"] == pytest.approx(1.0), "nothing evicted: no layer saving to bound"
    assert (focus["batch_size"], focus["arm"]) == (8, "focus") and focus["speedup"] == pytest.approx(1.5)
    assert focus["bound"] == pytest.approx(8 / 5) and focus["share_of_bound"] == pytest.approx(1.5 / 1.6)


def test_the_order_rotates_so_every_arm_runs_once_in_every_position():
    orders = [bt.rotated(list(arms.ARMS), rep) for rep in range(3)]
    assert orders[0] == ["stock", "delayed", "focus"]
    for position in range(3):
        assert sorted(order[position] for order in orders) == sorted(arms.ARMS)
    assert bt.rotated(["stock", "focus"], 3) == ["focus", "stock"]


def test_the_delayed_arm_is_the_focus_arm_without_eviction(tmp_path):
    options = {"min_batch_tokens": 0, "budget_reset": "request"}
    server_args = {arm: arms.arm_server_args(arm, threshold=0.7, alpha=2.0, config_dir=tmp_path, max_running=4,
                                             focus_options=options)
                   for arm in arms.ARMS}
    configs = {arm: yaml.safe_load((tmp_path / f"{arm}.yaml").read_text()) for arm in arms.ARMS}
    assert configs["stock"] == {"threshold": 0.7} and "LowConfidence" in server_args["stock"]
    assert configs["focus"] == {"threshold": 0.7, "alpha": 2.0, **options}
    assert configs["delayed"] == {"threshold": 0.7, "alpha": math.inf, "delayed_cache": True, **options}
    assert server_args["delayed"][:2] == ["--focus", "--focus-config"]
    assert [arms.arm_alpha(arm, 2.0) for arm in arms.ARMS] == [None, "inf", 2.0]


def test_bad_budget_reset_is_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.throughput", "--budget-reset", "never"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--budget-reset: invalid choice: 'never'" in out.stderr


def test_negative_guard_threshold_is_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.throughput", "--min-batch-tokens", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--min-batch-tokens: must be >= 0" in out.stderr


def test_bad_batch_sizes_are_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.throughput", "--batch-sizes", "1,x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--batch-sizes must be comma-separated integers" in out.stderr


def test_small_run_of_the_three_arms_writes_table_json_and_plot(tmp_path, bundled_model):
    result = bt.main(["--model-path", str(bundled_model), "--batch-sizes", "1,4", "--repeats", "1", "--max-new-tokens", "32", "--out", str(tmp_path),
                      "--log-dir", str(tmp_path), "--min-batch-tokens", "0", "--budget-reset", "block"])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["records"] == result["records"] and saved["arms"] == list(arms.ARMS)
    assert [(r["batch_size"], r["arm"]) for r in saved["records"]] == [(b, a) for b in (1, 4) for a in arms.ARMS]
    fields = {"output_throughput", "forwards_per_request", "tokens_per_forward", "rows_per_forward", "kept_ratio",
              "masked_kept_ratio", "evicted", "accuracy", "mean_step_ms"}
    for r in saved["records"]:
        assert fields <= set(r), f"{r['arm']} misses {fields - set(r)}"
        assert r["threshold"] == 0.8 and r["output_throughput"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["tokens_per_forward"] >= 1.0 and r["forwards_per_request"] >= 1.0
        assert r["mean_step_ms"] > 0, "step timings are on by default without a GPU"
        assert r["budget_reset"] == (None if r["arm"] == "stock" else "block")
        if r["arm"] == "stock":
            assert r["kept_ratio"] == 1.0 and r["masked_kept_ratio"] == 1.0 and r["evicted"] == 0, "stock never evicts"
            assert r["rows_per_forward"] == 16.0 and r["selection_share"] is None
        elif r["arm"] == "delayed":
            assert r["evicted"] == 0 and r["masked_kept_ratio"] == 1.0 and r["kept_ratio"] == 1.0, "alpha = inf"
            assert r["rows_per_forward"] < 16.0, "the delayed cache skips cached positions"
            assert r["evictable_step_share"] == 0.0 and r["alpha"] == "inf"
        else:
            assert 0.0 < r["selection_share"] < 1.0 and 0.0 < r["evictable_step_share"] <= 1.0
    assert [(g["batch_size"], g["arm"]) for g in saved["speedups"]] == [(b, a) for b in (1, 4) for a in arms.FOCUS_ARMS]
    assert saved["min_batch_tokens"] == 0 and saved["budget_reset"] == "block"
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
