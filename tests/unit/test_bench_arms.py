"""Every arm of a comparison runs one attention path: the benchmarks start the stock arm with the paged-planning
switch every FOCUS server exports at its launch (servers built, not started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from sglang_focus.bench import accuracy, arms, throughput
from sglang_focus.bench.local_server import cuda_available
from sglang_focus.compat import FLASHINFER_PAGED_ENV, attention_path_env
from sglang_focus.training import tasks

BUNDLED = "models/sdar-tasks"


def test_every_arm_gets_the_attention_path_of_focus_servers():
    envs = {arm: arms.arm_server_env(arm) for arm in arms.ARMS}
    assert all(env == attention_path_env() for env in envs.values()), envs
    assert attention_path_env()[FLASHINFER_PAGED_ENV] == "1"
    with pytest.raises(ValueError, match="arm must be one of"):
        arms.arm_server_env("fast")


def test_bench_throughput_starts_every_arm_on_the_paged_path(tmp_path, monkeypatch):
    monkeypatch.setattr(throughput, "start_side_by_side", lambda servers: None)
    args = throughput.parse_args(["--model-path", BUNDLED, "--batch-sizes", "1,4", "--log-dir", str(tmp_path),
                                  "--step-times"])
    servers = throughput.start_servers(args, max_new_tokens=64)
    assert list(servers) == list(arms.ARMS)
    for arm, server in servers.items():
        assert server.extra_env[FLASHINFER_PAGED_ENV] == "1", (arm, server.extra_env)
        assert server.extra_env[throughput.STEP_TIMES_ENV].endswith(f"step-times-{arm}.json")


def test_bench_accuracy_starts_every_arm_on_the_paged_path(tmp_path):
    args = accuracy.parse_args(["--model-path", BUNDLED, "--n", "5", "--log-dir", str(tmp_path)])
    for arm in arms.ARMS:
        server = accuracy.arm_server(arm, args, tmp_path)
        assert server.extra_env == attention_path_env(), (arm, server.extra_env)
        assert server.process is None and server.log_path == tmp_path / f"server-{arm}.log"


@pytest.mark.skipif(cuda_available(), reason="the CPU default")
def test_every_arm_serves_float32_on_the_cpu_unless_told(tmp_path, monkeypatch):
    """SGLang's `auto` would serve a float32 checkpoint in float16 on the CPU (emulated: several times slower);
    every tool asks for float32 there, for every arm, and an explicit --dtype wins."""
    monkeypatch.setattr(throughput, "start_side_by_side", lambda servers: None)
    dtype_of = lambda server: server.args[server.args.index("--dtype") + 1]  # noqa: E731
    args = throughput.parse_args(["--model-path", BUNDLED, "--batch-sizes", "1", "--log-dir", str(tmp_path)])
    assert args.dtype == "float32"
    assert {dtype_of(s) for s in throughput.start_servers(args, max_new_tokens=64).values()} == {"float32"}
    args = accuracy.parse_args(["--model-path", BUNDLED, "--n", "5", "--log-dir", str(tmp_path), "--dtype", "bfloat16"])
    assert {dtype_of(accuracy.arm_server(arm, args, tmp_path)) for arm in arms.ARMS} == {"bfloat16"}


def test_the_tools_default_to_the_one_embedded_checkpoint():
    """One constant decides which shipped checkpoint the tools use (`training.checkpoints.EMBEDDED_DEFAULT`)."""
    import importlib.util

    from sglang_focus.analysis import decodability
    from sglang_focus.bench import forward
    from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT

    spec = importlib.util.spec_from_file_location("load_test", Path(__file__).parents[2] / "examples" / "load_test.py")
    load_test = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(load_test)
    assert (EMBEDDED_DEFAULT / "config.json").is_file()
    assert throughput.parse_args([]).model_path == accuracy.parse_args([]).model_path == EMBEDDED_DEFAULT
    assert decodability.parse_args([]).model_path == EMBEDDED_DEFAULT
    assert Path(load_test.parse_args([]).model_path) == EMBEDDED_DEFAULT
    assert forward.BUNDLED_CONFIG == EMBEDDED_DEFAULT / "config.json"


@pytest.mark.parametrize("model, block", [("models/sdar-tasks", 16), ("models/smollm2-dllm", 32)])
def test_task_workloads_ask_for_whole_blocks_fitting_the_longest_answer(model, block):
    """Without --max-new-tokens every payload asks for the checkpoint's answer budget; given, exactly that."""
    workload = throughput.task_workload(Path(model), 20, None)
    tokenizer = Tokenizer.from_file(f"{model}/tokenizer.json")
    longest = max(len(tasks.encode_problem(tokenizer, p)[1]) for p in workload.problems)
    assert workload.max_new_tokens % block == 0 and longest <= workload.max_new_tokens < longest + block
    assert {p["sampling_params"]["max_new_tokens"] for p in workload.payloads} == {workload.max_new_tokens}
    assert throughput.task_workload(Path(model), 4, 40).max_new_tokens == 40
