"""Forward and kernel microbenchmarks (`sglang_focus.bench.forward`, `sglang_focus.bench.kernels`) on CPU.

The decoder is the `tiny` preset (4 layers, block 8), so layers 2 and 3 are the ones that run on kept rows only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglang_focus.bench import forward as bench_forward, kernels as bench_kernels
from sglang_focus.bench.forward import block_candidates, eviction_for, focus_forward, stock_forward

REPO = Path(__file__).resolve().parents[2]
SHAPE = bench_forward.PRESETS["tiny"]
BLOCK = SHAPE.block_size
CPU = torch.device("cpu")
BATCH = 3
SENTINEL = 12345.0


@pytest.fixture
def model():
    return bench_forward.build_decoder(SHAPE, max_batch=BATCH, dtype=torch.float32, device=CPU)


@pytest.fixture
def x():
    return bench_forward.random_hidden(SHAPE, BATCH, torch.float32, CPU)


@pytest.fixture(scope="module")
def kernels():
    return bench_kernels.import_kernels()


def run_focus(model, x, kernels, kept_fraction):
    eviction = eviction_for(kept_fraction, BLOCK)
    candidates = block_candidates(BATCH, BLOCK, eviction.target, CPU)
    return focus_forward(model, x, eviction.kept, kernels=kernels, candidates=candidates)


def test_focus_keeping_every_row_reproduces_stock(model, x, kernels):
    stock = stock_forward(model, x)
    focus = run_focus(model, x, kernels, 1.0)
    torch.testing.assert_close(focus.hidden, stock.hidden)
    assert focus.query_rows == stock.query_rows == (BLOCK,) * SHAPE.num_layers


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_benchmark_guard_passes_in_the_gpu_default_dtype_too(dtype, kernels):
    model = bench_forward.build_decoder(SHAPE, max_batch=BATCH, dtype=dtype, device=CPU)
    bench_forward.check_focus_matches_stock(model, bench_forward.random_hidden(SHAPE, BATCH, dtype, CPU), kernels)


def test_focus_runs_layers_from_two_on_exactly_k_rows_per_request(model, x, kernels):
    kept = eviction_for(0.25, BLOCK).kept
    assert kept == 2
    for layer in range(2, SHAPE.num_layers):  # a finite sentinel (NaN would spread) marks unwritten block KV rows
        model.cache_k[layer][:, SHAPE.context_len:] = SENTINEL
    result = run_focus(model, x, kernels, 0.25)
    assert result.query_rows == (BLOCK, kept, kept, kept)
    assert result.kv_rows == (BLOCK, BLOCK, kept, kept)
    assert result.hidden.shape == (BATCH, kept, SHAPE.hidden_size)
    assert result.keep_mask.shape == (BATCH * BLOCK,)
    rows = result.kept_rows
    assert rows.shape == (BATCH, kept) and bool((rows[:, 1:] > rows[:, :-1]).all()), "ascending, distinct"
    for layer in range(2, SHAPE.num_layers):
        written = (model.cache_k[layer][:, SHAPE.context_len:] != SENTINEL).all(dim=-1).all(dim=-1)  # [bs, B]
        expected = torch.zeros(BATCH, BLOCK, dtype=torch.bool).scatter_(1, rows, True)
        assert torch.equal(written, expected), f"layer {layer} wrote KV outside the kept rows"


def test_oracle_given_the_focus_rows_reproduces_focus(model, x, kernels):
    focus = run_focus(model, x, kernels, 0.25)
    oracle = focus_forward(model, x, focus.kept_rows.shape[1], kept_rows=focus.kept_rows)
    torch.testing.assert_close(oracle.hidden, focus.hidden)
    assert oracle.keep_mask is None


def test_layer_bound_matches_the_throughput_report_formula():
    assert bench_forward.layer_bound(36, 1.0) == pytest.approx(1.0)
    assert bench_forward.layer_bound(36, 0.25) == pytest.approx(36 / 10.5)


FORWARD_KEYS = {"batch_size", "kept_fraction", "kept_rows", "stock_ms", "focus_ms", "focus_oracle_ms", "speedup",
                "bound", "share_of_bound", "overhead_ms", "overhead_share"}
TINY_ARGS = ["--preset", "tiny", "--batch-sizes", "2", "--kept-fractions", "1.0,0.5", "--repeats", "1",
             "--warmup", "0", "--device", "cpu"]


def test_main_writes_forward_json_and_prints_a_table(tmp_path, capsys):
    bench_forward.main([*TINY_ARGS, "--out", str(tmp_path)])
    report = json.loads((tmp_path / "forward.json").read_text())
    assert {"hardware", "torch", "triton", "preset", "shape", "dtype", "date", "records"} <= report.keys()
    assert report["preset"] == "tiny" and report["shape"]["num_layers"] == SHAPE.num_layers
    assert report["dtype"] == "float32"
    assert [r["kept_fraction"] for r in report["records"]] == [1.0, 0.5]
    assert all(r.keys() == FORWARD_KEYS for r in report["records"])
    assert report["records"][1]["kept_rows"] == BLOCK // 2
    assert "| batch | kept | k rows | stock ms |" in capsys.readouterr().out
    assert (tmp_path / "forward.png").stat().st_size > 10_000, "the speedup plot is written next to the JSON"


@pytest.mark.parametrize("flags, message", [
    (["--kept-fractions", "0"], "(0, 1]"),
    (["--kept-fractions", "1.5"], "(0, 1]"),
    (["--preset", "sdar-70b"], "invalid choice"),
    (["--batch-sizes", "0,4"], "positive integers"),
])
def test_bad_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_forward.parse_args(flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_kernels_on_cpu_times_the_references_and_skips_triton(tmp_path, capsys):
    bench_kernels.main(["--batch-sizes", "2,3", "--block-size", "8", "--num-heads", "4", "--num-kv-heads", "2",
                        "--head-dim", "16", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                        "--out", str(tmp_path)])
    assert bench_kernels.NO_CUDA_LINE in capsys.readouterr().out
    report = json.loads((tmp_path / "kernels.json").read_text())
    assert report["triton_timed"] is False
    assert [(r["kernel"], r["batch_size"]) for r in report["records"]] == [
        ("importance", 2), ("select_enforce", 2), ("importance", 3), ("select_enforce", 3)]
    assert all(r["reference_ms"] > 0 and r["batched_ms"] > 0 and r["triton_ms"] is None and r["speedup"] is None
               for r in report["records"])


NO_SGLANG_SCRIPT = f"""
import sys
sys.modules["sglang"] = None  # any `import sglang...` now raises ImportError
from sglang_focus.bench import forward as bench_forward
bench_forward.main({TINY_ARGS!r})
assert sys.modules["sglang_focus.kernels"].__file__ == {str(REPO / "kernels" / "__init__.py")!r}
"""


def test_benchmarks_run_from_an_uninstalled_checkout_without_sglang():
    """As on a GPU machine with torch and Triton only: `python -S` skips the editable install's finder, so
    `sglang_focus.kernels` must come from the checkout's `kernels/` through the benchmark's fallback loader."""
    site_packages = Path(torch.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(site_packages)])}
    result = subprocess.run([sys.executable, "-S", "-c", NO_SGLANG_SCRIPT], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| batch |" in result.stdout


def _cell(batch_size, stock_ms, focus_ms, kept_fraction=0.25):
    return {"batch_size": batch_size, "kept_fraction": kept_fraction, "stock_ms": stock_ms, "focus_ms": focus_ms}


def test_guard_threshold_is_where_focus_starts_winning_for_good():
    from sglang_focus.bench.forward import guard_recommendation

    records = [_cell(1, 10.0, 12.0), _cell(4, 10.0, 9.0), _cell(8, 12.0, 12.5), _cell(16, 20.0, 15.0),
               _cell(32, 40.0, 25.0), _cell(32, 40.0, 45.0, kept_fraction=1.0)]
    guard = guard_recommendation(records, block_size=16, kept_fraction=0.25)
    assert guard["min_batch_tokens"] == 16 * 16, "batch 4 wins but batch 8 loses again: the threshold is batch 16"
    assert guard["batch_sizes"] == [1, 4, 8, 16, 32]


def test_guard_threshold_is_none_when_focus_never_wins_at_the_largest_batch():
    from sglang_focus.bench.forward import guard_recommendation

    records = [_cell(1, 10.0, 5.0), _cell(8, 10.0, 9.8)]  # 2 % faster only: under the margin
    assert guard_recommendation(records, block_size=16, kept_fraction=0.25)["min_batch_tokens"] is None
