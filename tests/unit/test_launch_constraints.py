"""FOCUS's launch (sglang_focus.launch through Focus.configure_server_args): CUDA graphs off, paged attention selected
once, and every configuration FOCUS cannot serve refused with one line, through SGLang's own argument preparation
and resolution (as `launch_server` runs them), in one process: the imports are the slow part."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from sglang_focus.compat import FLASHINFER_PAGED_ENV, attention_path_env
from sglang_focus.launch import PER_TOKEN_ROUTING_OVERRIDE, ModelFacts, first_refusal

RESOLVE_EACH = """
import contextlib, io, json, os, sys
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.arg_groups.overrides import resolving_view
from sglang.srt.server_args import ServerArgs, prepare_server_args
PAGED = sys.argv[2]

def server_args(case):
    # argv: the command line, as launch_server prepares it; kwargs: the Python API (sgl.Engine's ServerArgs)
    return prepare_server_args(case["argv"]) if "argv" in case else ServerArgs(**case["kwargs"])

results = {}
for name, case in json.loads(sys.argv[1]).items():
    os.environ.pop(PAGED, None)
    os.environ.update(case["env"])
    try:
        sa = server_args(case)
        sa.resolve_once()
        graphs = resolving_view(sa).cuda_graph_config
        results[name] = {"accepted": True, "paged_env": os.environ.get(PAGED),
                         "graphs": [str(graphs.prefill.backend), str(graphs.decode.backend)]}
    except SystemExit as exc:
        results[name] = {"accepted": False, "type": "SystemExit", "printed": str(exc.code) + "\\n"}
    except Exception as exc:
        err = io.StringIO()  # what the command line would print for it (excepthook installed by --focus)
        with contextlib.redirect_stderr(err):
            sys.excepthook(type(exc), exc, exc.__traceback__)
        results[name] = {"accepted": False, "type": type(exc).__name__, "printed": err.getvalue(),
                         "paged_env": os.environ.get(PAGED)}
print("RESULTS " + json.dumps(results))
"""


def variant(tmp_path_factory, name: str, source, **config_changes):
    """A copy of a tiny checkpoint's config and tokenizer (no weights: launches exit at validation) with
    `config_changes` applied to config.json."""
    path = tmp_path_factory.mktemp(name)
    for item in source.iterdir():
        if item.suffix != ".safetensors":
            (path / item.name).write_bytes(item.read_bytes())
    config = json.loads((source / "config.json").read_text())
    config.update(config_changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def block_routing_llada2(tmp_path_factory, tiny_llada2):
    # Block 32: stock SGLang checks block routing against its LLaDA2 table's block size (32) before the checkpoint's
    # block_size applies (patches/dllm_config.py), so a routed checkpoint with another block size fails stock.
    return variant(tmp_path_factory, "llada2_block_routing", tiny_llada2, expert_capacity=4, block_size=32)


def environment_without_paged_switch() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != FLASHINFER_PAGED_ENV}


def refused(message: str):
    return {"refused": message}


def cases(sdar, llada2_routed, tmp_path_factory) -> dict:
    """name -> (argv after --model-path M, environment, expected): accepted, or the refusal's message."""
    swa = variant(tmp_path_factory, "sdar_swa", sdar, is_hybrid_swa=True)
    chunked = variant(tmp_path_factory, "sdar_chunked", sdar, attention_chunk_size=8)
    focus = ["--focus"]
    return {
        "focus": ([str(sdar), *focus], {}, "accepted"),
        "stock": ([str(sdar), "--dllm-algorithm", "LowConfidence"], {}, "accepted"),
        "stock_block_routing": ([str(llada2_routed), "--dllm-algorithm", "LowConfidence"], {}, "accepted"),
        "focus_fp8_kv_cache": ([str(sdar), *focus, "--kv-cache-dtype", "fp8_e4m3"], {}, "accepted"),
        "focus_per_token_routing": ([str(llada2_routed), *focus, "--json-model-override-args",
                                     PER_TOKEN_ROUTING_OVERRIDE], {}, "accepted"),
        "focus_tensor_parallel": ([str(sdar), *focus, "--tp-size", "2"], {}, "accepted"),
        "pipeline_parallel": ([str(sdar), *focus, "--tp-size", "2", "--pp-size", "2"], {},
                              refused("FOCUS supports pp_size=1 only (got 2): tensor parallelism is the only")),
        "data_parallel": ([str(sdar), *focus, "--dp-size", "2"], {}, refused("FOCUS supports dp_size=1 only (got 2)")),
        "block_routing": ([str(llada2_routed), *focus], {}, refused("FOCUS cannot serve LLaDA2 block routing")),
        "hybrid_attention": ([str(sdar), *focus, "--prefill-attention-backend", "torch_native",
                              "--decode-attention-backend", "flashinfer"], {}, refused("(a hybrid backend)")),
        "two_batch_overlap": ([str(sdar), *focus, "--enable-two-batch-overlap"], {},
                              refused("does not support --enable-two-batch-overlap")),
        "sliding_window_pool": ([str(swa), *focus], {},
                                refused("does not support a hybrid sliding-window KV pool, which")),
        "chunked_attention": ([str(chunked), *focus], {},
                              refused("does not support sliding-window attention (attention_chunk_size=8), which")),
        "ragged_planning": ([str(sdar), *focus], {FLASHINFER_PAGED_ENV: "0"}, refused(f"{FLASHINFER_PAGED_ENV} turns")),
    }


# Through the Python API (what sgl.Engine resolves): refusals are exceptions the caller can catch.
API_CASES = {"api_focus": {"dllm_algorithm": "Focus"},
             "api_sync_mode": {"dllm_algorithm": "Focus", "dllm_fdfo": False},
             "api_tensor_parallel": {"dllm_algorithm": "Focus", "tp_size": 2},
             "api_pipeline_parallel": {"dllm_algorithm": "Focus", "pp_size": 2}}


@pytest.fixture(scope="module")
def resolved(tiny_sdar, block_routing_llada2, tmp_path_factory):
    table = cases(tiny_sdar, block_routing_llada2, tmp_path_factory)
    payload = {name: {"argv": ["--model-path", argv[0], *argv[1:], "--max-total-tokens", "4096"], "env": env}
               for name, (argv, env, _) in table.items()}
    payload.update({name: {"kwargs": {"model_path": str(tiny_sdar), "max_total_tokens": 4096, **kwargs}, "env": {}}
                    for name, kwargs in API_CASES.items()})
    out = subprocess.run([sys.executable, "-c", RESOLVE_EACH, json.dumps(payload), FLASHINFER_PAGED_ENV],
                         capture_output=True, text=True, timeout=600, env=environment_without_paged_switch())
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, out.stderr[-3000:]
    return table, json.loads(lines[-1][len("RESULTS "):])


def test_every_refusal_is_one_line_naming_the_setting(resolved):
    table, results = resolved
    for name, (_, _, expected) in table.items():
        if expected == "accepted":
            continue
        result = results[name]
        assert not result["accepted"], (name, result)
        printed = result["printed"]
        assert printed.startswith("sglang-focus: error: ") and expected["refused"] in printed, (name, printed)
        assert printed.count("\n") == 1 and "Traceback" not in printed, (name, printed)


def test_launch_server_exits_at_validation_with_the_line_and_no_traceback(block_routing_llada2):
    out = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--model-path", str(block_routing_llada2),
                          "--focus", "--host", "127.0.0.1", "--max-total-tokens", "4096"],
                         capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                         env=environment_without_paged_switch())
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("sglang-focus: error: FOCUS cannot serve LLaDA2 block routing:"), last


def test_the_python_api_raises_the_refusal(resolved):
    _, results = resolved
    for name in ("api_focus", "api_tensor_parallel"):
        assert results[name]["accepted"], results[name]
    for name, message in (("api_sync_mode", "FDFO mode only"), ("api_pipeline_parallel", "pp_size=1 only")):
        assert results[name]["type"] == "FocusLaunchError" and message in results[name]["printed"], results[name]


def test_servable_configurations_are_accepted(resolved):
    table, results = resolved
    for name, (_, _, expected) in table.items():
        if expected == "accepted":
            assert results[name]["accepted"], (name, results[name])


def test_focus_disables_cuda_graphs_and_selects_paged_planning_once_at_launch(resolved):
    _, results = resolved
    focus = results["focus"]
    assert all("disabled" in backend.lower() for backend in focus["graphs"]), focus
    assert focus["paged_env"] == attention_path_env()[FLASHINFER_PAGED_ENV]


def test_stock_launches_keep_sglang_planning_and_are_not_refused(resolved):
    _, results = resolved
    for name in ("stock", "stock_block_routing"):
        assert results[name]["accepted"] and results[name]["paged_env"] is None, results[name]
    assert results["ragged_planning"]["paged_env"] == "0", "a refused launch must not change the environment"


@pytest.mark.parametrize("dtype", ["nvfp4", "fp4_mx_block16", "mxfp8"])
def test_quantised_kv_caches_other_than_fp8_are_refused(dtype):
    """On a CPU SGLang itself refuses these dtypes before FOCUS's check runs, so the check is called directly."""
    cfg = SimpleNamespace(dllm_fdfo=True, tp_size=1, pp_size=1, dp_size=1, attention_backend="flashinfer",
                          prefill_attention_backend=None, decode_attention_backend=None,
                          enable_two_batch_overlap=False, kv_cache_dtype=dtype)
    model = ModelFacts(name="'M'", expert_capacity=None, kv_pool=None)
    assert first_refusal(cfg, model, paged_switch=None).startswith(f"FOCUS does not support --kv-cache-dtype {dtype}:")
    assert first_refusal(SimpleNamespace(**{**vars(cfg), "kv_cache_dtype": "fp8_e5m2"}), model,
                         paged_switch=True) is None


@pytest.mark.parametrize(("setting", "message"), [
    ({"attn_dp_size": 2}, "FOCUS supports attn_dp_size=1 only (got 2)"),
    ({"attn_cp_size": 2}, "FOCUS supports attn_cp_size=1 only (got 2)"),
    ({"dcp_size": 2}, "FOCUS supports dcp_size=1 only (got 2)"),
    ({"enable_attn_tp_input_scattered": True}, "FOCUS does not support --enable-attn-tp-input-scattered:"),
    ({"enable_layernorm_sp": True}, "FOCUS does not support --enable-layernorm-sp:"),
])
def test_tensor_parallel_layouts_that_split_a_batchs_rows_over_ranks_are_refused(setting, message):
    """Tensor parallelism is served, but not beside attention DP, context parallelism or row scattering (on a CPU
    SGLang cannot resolve most of these, so the check is called directly)."""
    cfg = SimpleNamespace(dllm_fdfo=True, tp_size=4, pp_size=1, dp_size=1, attention_backend="flashinfer",
                          prefill_attention_backend=None, decode_attention_backend=None,
                          enable_two_batch_overlap=False, kv_cache_dtype="auto")
    model = ModelFacts(name="'M'", expert_capacity=None, kv_pool=None)
    assert first_refusal(cfg, model, paged_switch=True) is None
    assert first_refusal(SimpleNamespace(**{**vars(cfg), **setting}), model, paged_switch=True).startswith(message)
