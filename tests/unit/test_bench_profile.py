"""bench.profile's arithmetic and sample bucketing (the server runs are a benchmark, not a test)."""

from __future__ import annotations

import math

import pytest

from sglang_focus.bench import profile

SMOLLM2 = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
           "intermediate_size": 1536, "num_hidden_layers": 30, "vocab_size": 49153}


def test_stock_step_flops_are_the_model_matmuls_of_every_row():
    per_row = 30 * 2 * 576 * (960 + 576 + 3072 + 1536) + 2 * 576 * 49153  # ~269 MFLOP
    assert profile.step_flops(SMOLLM2, 32, 32) == pytest.approx(32 * per_row)


def test_focus_step_flops_count_layer_0_and_layer_1_qkv_on_all_rows_and_the_rest_on_kept_rows():
    rows, kept = 256, 40
    extra_rows = profile.step_flops(SMOLLM2, rows, kept) - profile.step_flops(SMOLLM2, kept, kept)
    layer0_and_qkv1 = 2 * 576 * (960 + 576 + 3072 + 1536) + 2 * 576 * 960
    assert extra_rows == pytest.approx((rows - kept) * layer0_and_qkv1)


def test_samples_are_bucketed_by_their_innermost_recognised_frame_inside_a_step():
    step = "run_event_loop (scheduler.py:1);Scheduler.run_batch (scheduler.py:2);ModelRunner.forward (model_runner.py:3)"
    collapsed = "\n".join([
        f"{step};LlamaMLP.forward (llada2.py:9);MergedColumnParallelLinear.forward (linear.py:4);"
        "UnquantizedLinearMethod.apply (quantization/unquant.py:614) 7",
        f"{step};RadixAttention.forward (radix_attention.py:5);"
        "TorchNativeAttnBackend._run_sdpa_forward_extend (torch_native_backend.py:140) 3",
        f"{step};LowConfidence.step (algorithm/low_confidence.py:35);softmax (torch/nn/functional.py:2207) 2",
        f"{step};Focus._step (unmasking/algorithm.py:80);ForwardBatch.init_new (forward_batch_info.py:1) 1",
        "run_event_loop (scheduler.py:1);recv_requests (scheduler.py:9) 50",  # idle: not inside a step
        "garbage line without a count",
    ])
    counts = profile.bucket_samples(collapsed)
    assert counts == {"GEMM (linear layers)": 7, "attention": 3, "unmasking (softmax over the vocabulary)": 2,
                      profile.OTHER: 1}


def test_split_scales_the_sampled_shares_to_the_step_time(monkeypatch):
    monkeypatch.setattr(profile, "roofline_step_ms", lambda cfg, rows, kept: 50.0)
    record = {"arm": "stock", "batch_size": 1, "steps": 10, "step_ms": 100.0, "rows_per_step": 32.0,
              "kept_rows_per_step": 32.0, "tokens_per_forward": 2.0, "samples": {"attention": 1, "GEMM (linear layers)": 3}}
    out = profile.with_roofline(record, SMOLLM2)
    assert out["split_ms"] == {"GEMM (linear layers)": 75.0, "attention": 25.0}
    assert out["matmul_share"] == 0.5
    assert math.isclose(out["model_gflops"], profile.step_flops(SMOLLM2, 32, 32) / 0.1 / 1e9)
    assert "| 1 | stock | 32 / 32 | 100.0 | 50.0 |" in profile.markdown_tables([out])


def test_roofline_times_real_gemms():
    assert profile.time_linear_ms(4, 16, 8, repeats=1) > 0
    assert profile.roofline_step_ms({**SMOLLM2, "num_hidden_layers": 2, "vocab_size": 64}, 8, 2) > 0
