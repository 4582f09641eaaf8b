"""bench.throughput end to end on the bundled model (small batches), and its pure helpers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sglang_focus.bench import throughput as bt

pytestmark = pytest.mark.e2e


def test_layer_bound_matches_the_formula():
    assert bt.layer_bound(8, 1.0) == pytest.approx(1.0)
    assert bt.layer_bound(36, 0.1) == pytest.approx(36 / (2 + 34 * 0.1))
    assert bt.layer_bound(36, 0.0) == pytest.approx(18.0)


def test_speedups_pair_the_arms_of_each_batch_size():
    records = [{"batch_size": 8, "arm": "stock", "output_throughput": 100.0, "kept_ratio": 1.0},
               {"batch_size": 8, "arm": "focus", "output_throughput": 150.0, "kept_ratio": 0.5},
               {"batch_size": 1, "arm": "stock", "output_throughput": 10.0, "kept_ratio": 1.0}]
    (gain,) = bt.speedups(records, num_layers=8)
    assert gain["batch_size"] == 8 and gain["speedup"] == pytest.approx(1.5)
    assert gain["bound"] == pytest.approx(8 / 5) and gain["share_of_bound"] == pytest.approx(1.5 / 1.6)


def test_negative_guard_threshold_is_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.throughput", "--min-batch-tokens", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--min-batch-tokens: must be >= 0" in out.stderr


def test_bad_batch_sizes_are_one_clear_error():
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.throughput", "--batch-sizes", "1,x"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--batch-sizes must be comma-separated integers" in out.stderr


def test_small_run_writes_table_json_and_plot(tmp_path):
    result = bt.main(["--batch-sizes", "1,4", "--repeats", "1", "--max-new-tokens", "32", "--out", str(tmp_path),
                      "--log-dir", str(tmp_path), "--min-batch-tokens", "0"])
    saved = json.loads((tmp_path / "throughput.json").read_text())
    assert saved["records"] == result["records"]
    cells = {(r["batch_size"], r["arm"]) for r in saved["records"]}
    assert cells == {(b, a) for b in (1, 4) for a in ("stock", "focus")}
    for r in saved["records"]:
        assert r["threshold"] == 0.8 and r["output_throughput"] > 0 and 0.0 <= r["accuracy"] <= 1.0
        assert r["tokens_per_forward"] >= 1.0
        assert r["mean_step_ms"] > 0, "step timings are on by default without a GPU"
        if r["arm"] == "stock":
            assert r["kept_ratio"] == 1.0 and r["masked_kept_ratio"] == 1.0, "stock never evicts"
            assert r["selection_share"] is None
        else:
            assert 0.0 < r["selection_share"] < 1.0 and 0.0 < r["evictable_step_share"] <= 1.0
    assert [g["batch_size"] for g in saved["speedups"]] == [1, 4] and saved["min_batch_tokens"] == 0
    assert (tmp_path / "throughput.png").stat().st_size > 10_000
