"""The dLLM compatibility fixes: checkpoint mask id / block size, torch_native on CPU, no mask token emitted.

Tests that need SGLang's hooks applied run in a subprocess (HookRegistry cannot unpatch), each against a
control run with the plugin disabled, to show what stock SGLang does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

RESOLVE = """
import json, sys
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.server_args import ServerArgs
from sglang.srt.dllm.config import DllmConfig
from sglang.srt.arg_groups.overrides import resolving_view
sa = ServerArgs(model_path=sys.argv[1], dllm_algorithm="LowConfidence", max_total_tokens=4096)
result = {}
try:
    cfg = DllmConfig.from_server_args(sa)
    result.update(mask_id=cfg.mask_id, block_size=cfg.block_size)
    sa.resolve_once()
    view = resolving_view(sa)
    result.update(attention_backend=view.attention_backend, page_size=view.page_size)
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(result))
"""


def resolve(model_path, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", RESOLVE, str(model_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **env})
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def test_checkpoint_mask_id_block_size_and_cpu_backend(tiny_sdar):
    fixed = resolve(tiny_sdar)
    config = json.loads((tiny_sdar / "config.json").read_text())
    assert fixed["mask_id"] == config["mask_token_id"] == 3
    assert fixed["block_size"] == config["block_size"] == 16
    assert fixed["page_size"] == 16, "pages stay block-aligned with the checkpoint's block size"
    if not torch.cuda.is_available():
        assert fixed["attention_backend"] == "torch_native"

    stock = resolve(tiny_sdar, SGLANG_PLUGINS="none")
    assert stock["mask_id"] == 151669 and stock["block_size"] == 4, "stock SGLang uses its hard-coded table"


def test_mask_id_outside_the_vocabulary_is_a_clear_error(tiny_sdar, tmp_path):
    bad = tmp_path / "bad_mask"
    bad.mkdir()
    for f in tiny_sdar.iterdir():
        (bad / f.name).symlink_to(f)
    (bad / "config.json").unlink()
    config = json.loads((tiny_sdar / "config.json").read_text())
    config["mask_token_id"] = 9999
    (bad / "config.json").write_text(json.dumps(config))
    assert "outside the vocabulary" in resolve(bad)["error"]


def test_low_confidence_step_never_picks_the_mask_token():
    """Direct call of the hook around the real (unpatched in this process) LowConfidence.step."""
    from types import SimpleNamespace

    from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
    from sglang.srt.dllm.config import DllmConfig

    from sglang_focus.patches.dllm_algorithm_low_confidence import step_without_mask_token

    mask_id, block = 3, 4
    config = DllmConfig("LowConfidence", {"threshold": 0.5}, block, mask_id, max_running_requests=1)
    algorithm = LowConfidence(config)

    def batch():
        ids = torch.full((block,), mask_id)
        return SimpleNamespace(batch_size=1, input_ids=ids, dllm_prompt_mask=None)

    logits = torch.zeros(block, 16)
    logits[:, mask_id] = 10.0  # the mask token is every position's confident favourite
    logits[:, 7] = 5.0

    stock_batch = batch()
    LowConfidence.step(algorithm, stock_batch, logits.clone(), [None])
    assert (stock_batch.input_ids == mask_id).all(), "stock decodes the mask token, so nothing ever advances"

    fixed_batch = batch()
    step_without_mask_token(LowConfidence.step, algorithm, fixed_batch, logits.clone(), [None])
    assert (fixed_batch.input_ids != mask_id).any()
    assert set(fixed_batch.input_ids.tolist()) <= {mask_id, 7}
