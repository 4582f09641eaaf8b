"""The block-32 checkpoint in training (models/sdar-tasks-b32) is served by stock SGLang's own SDAR class.

Whatever its training step, stock LowConfidence through a real server decodes what the plain-PyTorch copy of the
checkpoint decodes, and a FOCUS server evicts on it and reports its counters.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import torch

import yaml

from sglang_focus.bench.local_server import LocalServer
from sglang_focus.training import tasks
from sglang_focus.training.tokenizer import EOS_TOKEN
from sglang_focus.training.train import block_diffusion_generate, load_checkpoint

pytestmark = pytest.mark.e2e

CHECKPOINT = Path(__file__).resolve().parents[2] / "models" / "sdar-tasks-b32"
MAX_NEW_TOKENS = 96
THRESHOLD = 0.8  # both arms
ARMS = {"stock": ("LowConfidence", {"threshold": THRESHOLD}),
        "focus": ("Focus", {"threshold": THRESHOLD, "min_batch_tokens": 0})}  # single requests: guard off


def serve(tmp_path: Path, arm: str) -> LocalServer:
    algorithm, options = ARMS[arm]
    config = tmp_path / f"{arm}.yaml"
    config.write_text(yaml.safe_dump(options))
    return LocalServer(CHECKPOINT, ["--dllm-algorithm", algorithm, "--dllm-algorithm-config", str(config),
                                    "--dtype", "float32"], log_path=tmp_path / f"{arm}.log")


@pytest.fixture(scope="module")
def problems():
    return tasks.generate("heldout", 5, seed="b32-serving", tasks=tasks.suite_of(CHECKPOINT))


def generate(server, prompt: list[int]) -> dict:
    payload = {"input_ids": prompt, "sampling_params": {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0}}
    reply = requests.post(f"{server.base_url}/generate", json=payload, timeout=300)
    reply.raise_for_status()
    return reply.json()


def test_checkpoint_is_block_32_with_12_layers_on_the_newest_suite():
    model, _ = load_checkpoint(CHECKPOINT)
    assert model.cfg["block_size"] == 32 and model.cfg["num_hidden_layers"] >= 12
    assert model.cfg["num_attention_heads"] > 4
    assert tasks.suite_of(CHECKPOINT) == tasks.SUITES[tasks.NEWEST_SUITE]


def test_stock_server_decodes_what_the_plain_model_decodes(tmp_path, problems):
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(CHECKPOINT)
    model.eval()
    with serve(tmp_path, "stock") as server:
        for problem in problems:
            prompt, _ = tasks.encode_problem(tokenizer, problem)
            expected = block_diffusion_generate(model, prompt, threshold=THRESHOLD, max_new_tokens=MAX_NEW_TOKENS,
                                                eos_id=tokenizer.token_to_id(EOS_TOKEN)).ids
            assert generate(server, prompt)["output_ids"] == expected, problem.prompt


def test_focus_server_evicts_and_reports_its_counters(tmp_path, problems):
    _, tokenizer = load_checkpoint(CHECKPOINT)
    with serve(tmp_path, "focus") as server:
        stats = [generate(server, tasks.encode_problem(tokenizer, p)[0])["meta_info"]["focus_stats"] for p in problems]
    assert all(s["forwards"] > 0 and s["unmasked"] > 0 for s in stats)
    assert sum(s["evicted"] for s in stats) > 0, "FOCUS evicts masked rows of a 32-token block"
