"""The embedded default, the SmolLM2 block-diffusion conversion: built from the wheel and the committed adapter, and
served with eviction by a FOCUS server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
import yaml

from sglang_focus.bench.local_server import LocalServer
from sglang_focus.training import chat_data, convert_smollm2, tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT, SMOLLM2_DLLM

pytestmark = pytest.mark.e2e

ADAPTER = SMOLLM2_DLLM / "adapter" / "adapter.safetensors"


@pytest.fixture(scope="module")
def dllm_model() -> Path:
    """The conversion `make setup` builds (built here when missing: about 20 s)."""
    return convert_smollm2.build(SMOLLM2_DLLM, adapter=ADAPTER, log=lambda _: None)


def test_the_embedded_default_is_the_base_with_the_committed_adapter_merged(dllm_model):
    assert EMBEDDED_DEFAULT == dllm_model
    built = json.loads((dllm_model / convert_smollm2.RECORD_NAME).read_text())
    assert built["adapter_sha256"] == convert_smollm2.sha256_of(ADAPTER)
    assert convert_smollm2.is_up_to_date(dllm_model, convert_smollm2.build_record(convert_smollm2.GGUF_SHA256,
                                                                                  built["adapter_sha256"]))
    assert built["safetensors_sha256"] != convert_smollm2.SAFETENSORS_SHA256, "the adapter changed the weights"
    config = json.loads((dllm_model / "config.json").read_text())
    assert config["block_size"] == 32 and tasks.suite_of(dllm_model) == tasks.SUITES["tasks-all"]


def test_focus_server_evicts_on_the_conversion_and_its_answers_end(dllm_model, tmp_path):
    """Four held-out chat prompts at once (guard off): every reply ends with the end of turn, FOCUS evicts masked
    rows and decodes more than one token per forward."""
    config = tmp_path / "focus.yaml"
    config.write_text(yaml.safe_dump({"threshold": 0.8, "min_batch_tokens": 0}))
    prompts = [r["prompt"] for r in chat_data.load(chat_data.DATA_FILE, "heldout")[:4]]
    payload = {"text": [chat_data.chat_text(p) for p in prompts],
               "sampling_params": {"max_new_tokens": 96, "temperature": 0}}
    with LocalServer(dllm_model, ["--focus", "--focus-config", str(config), "--dtype", "float32"],
                     log_path=tmp_path / "focus.log") as server:
        reply = requests.post(f"{server.base_url}/generate", json=payload, timeout=300)
    reply.raise_for_status()
    outputs = reply.json()
    assert len(outputs) == len(prompts)
    stats = [o["meta_info"]["focus_stats"] for o in outputs]
    assert all(o["meta_info"]["finish_reason"]["type"] == "stop" and o["text"].strip() for o in outputs)
    assert sum(s["evicted"] for s in stats) > 0 and all(s["masked_kept_ratio"] < 1.0 for s in stats)
    assert sum(s["unmasked"] for s in stats) > sum(s["forwards"] for s in stats), "more than 1 token per forward"
