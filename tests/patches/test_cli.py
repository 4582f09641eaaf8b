"""`--focus` on the command line: bad options fail at start-up with one clear line and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def launch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sglang.launch_server", *args, "--host", "127.0.0.1"],
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
                          env={**os.environ, "SGLANG_USE_CPU_ENGINE": "1"})


@pytest.fixture(scope="module")
def not_a_dllm(tmp_path_factory, tiny_sdar):
    path = tmp_path_factory.mktemp("qwen3")
    config = json.loads((tiny_sdar / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    (path / "config.json").write_text(json.dumps(config))
    return path


def yaml_file(tmp_path, text: str) -> str:
    path = tmp_path / "focus.yaml"
    path.write_text(text)
    return str(path)


CASES = {
    "alpha_below_one": (lambda m, t: ["--model-path", m, "--focus", "--focus-alpha", "0.5"],
                        "'alpha' must be >= 1"),
    "unknown_yaml_key": (lambda m, t: ["--model-path", m, "--focus", "--focus-config", yaml_file(t, "alhpa: 2\n")],
                         "unknown FOCUS option(s) 'alhpa'"),
    "non_numeric_value": (lambda m, t: ["--model-path", m, "--focus", "--focus-config",
                                        yaml_file(t, "threshold: high\n")], "'threshold' must be a number"),
    "threshold_out_of_range": (lambda m, t: ["--model-path", m, "--dllm-algorithm", "Focus",
                                             "--dllm-algorithm-config", yaml_file(t, "threshold: 1.5\n")],
                               "'threshold' must be in (0, 1]"),
    "other_algorithm": (lambda m, t: ["--model-path", m, "--focus", "--dllm-algorithm", "LowConfidence"],
                        "cannot be combined with --dllm-algorithm LowConfidence"),
    "sync_mode": (lambda m, t: ["--model-path", m, "--focus", "--no-dllm-fdfo"], "FDFO mode only"),
    "audit_every_negative": (lambda m, t: ["--model-path", m, "--focus", "--focus-config",
                                           yaml_file(t, "audit_every: -4\n")], "'audit_every' must be >= 0"),
    "audit_every_not_an_integer": (lambda m, t: ["--model-path", m, "--dllm-algorithm", "Focus",
                                                 "--dllm-algorithm-config", yaml_file(t, "audit_every: 0.5\n")],
                                   "'audit_every' must be an integer"),
    "missing_config_file": (lambda m, t: ["--model-path", m, "--focus", "--focus-config", str(t / "nope.yaml")],
                            "does not exist"),
}


PREPARE_EACH = """
import contextlib, io, json, sys
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.server_args import prepare_server_args
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            prepare_server_args(argv)
        results[name] = "accepted"
    except SystemExit as exc:
        results[name] = str(exc.code) if not isinstance(exc.code, int) else err.getvalue().strip()
print("RESULTS " + json.dumps(results))
"""


def test_bad_focus_options_fail_with_one_clear_line(tiny_sdar, tmp_path):
    """All cases through SGLang's own argument preparation, in one process (imports are the slow part)."""
    argvs = {name: make_args(str(tiny_sdar), tmp_path / name) for name, (make_args, _) in CASES.items()
             if (tmp_path / name).mkdir() is None}
    out = subprocess.run([sys.executable, "-c", PREPARE_EACH, json.dumps(argvs)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "SGLANG_USE_CPU_ENGINE": "1"})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, out.stderr[-3000:]
    results = json.loads(lines[-1][len("RESULTS "):])
    for name, (_, message) in CASES.items():
        assert results[name].startswith("sglang-focus: error:") and message in results[name], (name, results[name])
        assert "\n" not in results[name]


def test_launch_server_prints_the_error_line_without_a_traceback(tiny_sdar):
    out = launch("--model-path", str(tiny_sdar), "--focus", "--focus-alpha", "0.5")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "sglang-focus: error: 'alpha' must be >= 1 (inf disables eviction), got 0.5"


def test_focus_on_a_model_that_is_not_a_diffusion_llm(not_a_dllm):
    out = launch("--model-path", str(not_a_dllm), "--focus")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "Qwen3ForCausalLM" in last and "is not a block-diffusion LLM" in last


def test_focus_flags_are_listed_in_help():
    out = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--help"], capture_output=True, text=True,
                         timeout=300)
    assert "--focus-alpha" in out.stdout and "--focus-config" in out.stdout
