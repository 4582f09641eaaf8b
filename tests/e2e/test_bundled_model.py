"""The bundled checkpoint through real servers: the accuracy harness on a handful of held-out prompts, and the demo."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sglang_focus.bench import accuracy as bench_accuracy
from sglang_focus.bench import demo
from sglang_focus.bench.arms import ARMS
from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT
from sglang_focus.training.tokenizer import EOS_TOKEN
from sglang_focus.training.train import block_diffusion_generate, load_checkpoint

pytestmark = pytest.mark.e2e

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "sdar-tasks"
N = 5  # one problem per task


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("accuracy")
    bench_accuracy.main(["--model-path", str(BUNDLED), "--n", str(N), "--max-running", str(N), "--dtype", "float32",
                         "--min-batch-tokens", "0", "--out", str(out), "--log-dir", str(out)])
    return json.loads((out / "accuracy.json").read_text())


def test_harness_writes_one_record_per_arm_at_the_same_threshold(harness):
    records = {r["arm"]: r for r in harness["records"]}
    assert list(records) == list(ARMS) == ["stock", "delayed", "focus"]
    problems = tasks.generate("heldout", N, seed=harness["seed"], tasks=tasks.suite_of(BUNDLED))
    assert [p.prompt for p in problems] == [a["prompt"] for a in harness["answers"]]
    for r in records.values():
        assert r["n"] == N and r["threshold"] == 0.8 and 0.0 <= r["accuracy"] <= 1.0
        assert r["accuracy"] == pytest.approx(r["correct"] / N)
        assert r["tokens_per_forward"] >= 1.0 and r["output_tokens_per_s"] > 0 and r["forwards_per_request"] >= 1.0
        assert r["speedup"] == pytest.approx(r["output_tokens_per_s"] / records["stock"]["output_tokens_per_s"])
        expected = sum(tasks.is_correct(p, a[r["arm"]]) for p, a in zip(problems, harness["answers"], strict=True))
        assert r["correct"] == expected, "the record's score is the checker's verdict on the listed answers"
    stock, delayed, focus = records["stock"], records["delayed"], records["focus"]
    assert stock["masked_kept_ratio"] == 1.0 and stock["evicted"] == 0, "stock never evicts"
    assert stock["rows_per_forward"] == 16.0 and stock["budget_reset"] is None
    assert delayed["evicted"] == 0 and delayed["masked_kept_ratio"] == 1.0, "the delayed-only arm never evicts"
    assert delayed["rows_per_forward"] < 16.0, "the delayed cache skips cached positions"
    assert delayed["alpha"] == "inf" and delayed["budget_reset"] == focus["budget_reset"] == "request", "default"
    assert focus["masked_kept_ratio"] < 1.0 and focus["evicted"] > 0, "FOCUS evicts masked rows on this model"
    assert set(harness["agreement"]) == {"delayed", "focus"}
    assert all(0.0 <= share <= 1.0 for share in harness["agreement"].values())


def test_stock_arm_answers_are_the_reference_decoders(harness):
    """The harness measures the checkpoint: stock SGLang (float32) decodes what the plain-PyTorch model decodes."""
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(BUNDLED)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    for entry, problem in zip(harness["answers"], tasks.generate("heldout", N, seed="0", tasks=tasks.suite_of(BUNDLED))):
        assert entry["prompt"] == problem.prompt
        prompt, _ = tasks.encode_problem(tokenizer, problem)
        ids = block_diffusion_generate(model, prompt, threshold=0.8, max_new_tokens=harness["max_new_tokens"],
                                       eos_id=eos).ids
        assert tasks.extract_answer(tokenizer.decode(ids, skip_special_tokens=False)) == entry["stock"]


def test_harness_rejects_a_checkpoint_without_the_task_tokenizer(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.accuracy", "--model-path", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no tokenizer.json" in out.stderr and "Traceback" not in out.stderr


def test_demo_marks_every_answer_and_stops_its_server(tmp_path):
    """`make demo` on the embedded default (the SmolLM2 conversion): chat answers shown, one problem per task family
    plus one through the OpenAI API checked, and the server gone afterwards."""
    out = subprocess.run([sys.executable, "-m", "sglang_focus.bench.demo", "--log", str(tmp_path / "demo.log")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    marks = [line.strip()[0] for line in out.stdout.splitlines() if line.strip()[:1] in ("✓", "✗")]
    assert len(marks) == len(tasks.suite_of(EMBEDDED_DEFAULT)) + 1
    chat = [line for line in out.stdout.splitlines() if line.strip().startswith("→")]
    assert len(chat) == demo.CHAT_PROMPTS + 1 and any(len(line.strip()) > 10 for line in chat)
    assert f"{marks.count('✓')}/{len(marks)} task answers exactly right" in out.stdout
    assert out.stdout.count("tokens/forward") == len(marks) - 1 + demo.CHAT_PROMPTS, "frontend answers carry stats"
    assert "Server stopped." in out.stdout
    port = int(re.search(r"Server ready at http://127\.0\.0\.1:(\d+)", out.stdout).group(1))
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, "the demo left its server running"
