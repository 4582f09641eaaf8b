"""The converted SmolLM2 base is the pretrained model and nothing else: SGLang's own LLaDA2 class computes, on every
denoising step, the logits an independent float64 Llama forward computes, and stock SGLang decodes what a plain
block-diffusion decoder over that forward decodes.

Independent means: the reference reads the GGUF with transformers' own GGUF loader (its own dequantisation and q/k
row order) into transformers' `LlamaForCausalLM`, in float64, and attends with an additive block-causal mask. It
shares nothing with `sglang_focus.training.convert_smollm2` but the appended mask row, which it derives itself (the
mean of the embedding rows). The server runs stock LowConfidence in float32 with SGLANG_FOCUS_DUMP_LOGITS, so every
step's ids, positions and logits can be compared.

Tolerance: SmolLM2's residual stream carries activations of ~1.7e4, so float32 round-off alone moves its logits
(|logit| ≤ ~40) by up to ~2e-2: transformers' own float32 forward differs from its float64 one by 1.8e-2 on these
steps. SGLang's float32 logits must be within MAX_ABS_ERROR of the float64 reference everywhere and MEAN_ABS_ERROR on
average; a wrong conversion (q/k rows in llama.cpp's order, a missing norm, a shifted mask row) is off by whole
logits, several orders of magnitude above these bounds.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from sglang_focus.bench.local_server import LocalServer
from sglang_focus.training import convert_smollm2

pytestmark = pytest.mark.e2e

THRESHOLD = 0.9
BLOCK_SIZE = 32
# A chat prompt of 37 tokens (with SmolLM2's default system prompt) fills one prompt-only block (whose KV every later
# step reads from the cache) and 5 tokens of the next; 27 new tokens are the rest of that block.
MAX_NEW_TOKENS = 27
MAX_ABS_ERROR = 0.1
MEAN_ABS_ERROR = 2e-3
BASE_MODEL = Path(__file__).resolve().parents[2] / "models" / "smollm2-base"
REFERENCE_DECODER = Path(__file__).with_name("test_reference_decoder.py")
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def base_model() -> Path:
    """The converted checkpoint `make setup` builds (built here when missing: about 20 s)."""
    return convert_smollm2.build(BASE_MODEL, log=lambda _: None)


@pytest.fixture(scope="module")
def reference_llama():
    """(float64 LlamaForCausalLM from the GGUF via transformers, [V + 1, H] float64 input embedding with the mask
    row appended)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    gguf = str(convert_smollm2.locate_gguf())
    fields = load_gguf_checkpoint(gguf, return_tensors=False)["config"]
    config = LlamaConfig(**{k: v for k, v in fields.items() if k not in ("_model_name_or_path", "model_type")})
    config._attn_implementation = "eager"
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(config)
    weights = load_gguf_checkpoint(gguf, return_tensors=True, model_to_load=skeleton)["tensors"]
    model = LlamaForCausalLM(config).double().eval()
    model.load_state_dict({k: v.double() for k, v in weights.items()}, strict=False)
    model.tie_weights()
    embed = model.model.embed_tokens.weight.detach()
    return model, torch.cat([embed, embed.mean(0, keepdim=True)])


def reference_logits(reference, ids: list[int], block_size: int, first_row: int = 0) -> torch.Tensor:
    """[len(ids) - first_row, V + 1] float64 logits of rows first_row.. of the whole sequence under block-causal
    attention (recomputed from scratch, no KV cache)."""
    model, embed = reference
    n = len(ids)
    block = torch.arange(n) // block_size
    additive = torch.zeros(n, n, dtype=torch.float64).masked_fill(block[None, :] > block[:, None], float("-inf"))
    with torch.no_grad():
        hidden = model.model(inputs_embeds=embed[torch.tensor(ids)][None], attention_mask=additive[None, None],
                             position_ids=torch.arange(n)[None]).last_hidden_state[0]
    return hidden[first_row:] @ embed.T  # the tied output embedding, the mask row included


def load_reference_decoder():
    spec = importlib.util.spec_from_file_location("_sdar_reference_decoder", REFERENCE_DECODER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def stock_run(base_model, tmp_path_factory):
    """One chat request on a stock float32 server dumping its steps: (prompt ids, output ids, this request's
    step dumps in order)."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("smollm2_base")
    dumps = tmp / "dumps"
    config = tmp / "stock.yaml"
    config.write_text(yaml.safe_dump({"threshold": THRESHOLD}))
    prompt = AutoTokenizer.from_pretrained(str(base_model)).apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_dict=False)
    args = ["--dllm-algorithm", "LowConfidence", "--dllm-algorithm-config", str(config), "--dtype", "float32",
            "--max-running-requests", "1"]
    with LocalServer(base_model, args, log_path=tmp / "server.log",
                     env={"SGLANG_FOCUS_DUMP_LOGITS": str(dumps)}) as server:
        warmup = set(dumps.glob("step-*.pt"))
        resp = server.generate({"input_ids": prompt,
                                "sampling_params": {"max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}})
    assert resp.status_code == 200, resp.text
    assert len(prompt) + MAX_NEW_TOKENS == 2 * BLOCK_SIZE, f"the chat prompt has {len(prompt)} tokens"
    output = resp.json()["output_ids"]
    mask_id = json.loads((base_model / "config.json").read_text())["mask_token_id"]
    steps = [torch.load(path) for path in sorted(set(dumps.glob("step-*.pt")) - warmup)]
    # The last health check's request (SGLang's /health_generate) may still be decoding its block when ours starts.
    return prompt, output, [s for s in steps if is_step_of(s, prompt + output, mask_id)]


def is_step_of(step: dict, committed: list[int], mask_id: int) -> bool:
    """The dumped step is one of the request whose final sequence is `committed`: each id is final or a mask."""
    return all(token in (mask_id, committed[p]) for p, token in zip(step["positions"].tolist(),
                                                                  step["input_ids"].tolist()))


def test_conversion_is_reproducible_and_checked(base_model):
    """The build record names the pinned inputs and the weights' recorded checksum; a changed file is rebuilt."""
    record = convert_smollm2.build_record(convert_smollm2.GGUF_SHA256)
    assert convert_smollm2.is_up_to_date(base_model, record)
    assert convert_smollm2.sha256_of(base_model / "model.safetensors") == convert_smollm2.SAFETENSORS_SHA256
    assert not convert_smollm2.is_up_to_date(base_model, {**record, "converter_version": -1})


@pytest.fixture(scope="module")
def reference_steps(stock_run, reference_llama):
    """Per dumped step: (prefix length h, the sequence the step saw, its float64 reference logits [B, V + 1])."""
    prompt, output, steps = stock_run
    committed = prompt + output
    out = []
    for step in steps:
        (h,) = step["prefix_lens"].tolist()
        ids = committed[:h] + step["input_ids"].tolist()
        out.append((h, ids, reference_logits(reference_llama, ids, BLOCK_SIZE, h)))
    return out


def test_sglang_llada2_logits_equal_the_independent_llama_at_every_step(stock_run, reference_steps):
    _, _, steps = stock_run
    assert len(steps) >= MAX_NEW_TOKENS // 4, f"only {len(steps)} steps dumped"
    for n, (step, (h, _, ref)) in enumerate(zip(steps, reference_steps)):
        assert step["positions"].tolist() == list(range(h, h + BLOCK_SIZE))
        got = step["logits"].double()
        assert got.shape == ref.shape, f"step {n}: SGLang logits {tuple(got.shape)}, reference {tuple(ref.shape)}"
        error = (got - ref).abs()
        assert error.max() <= MAX_ABS_ERROR and error.mean() <= MEAN_ABS_ERROR, \
            f"step {n} (prefix {h}): max |error| {error.max():.3e}, mean {error.mean():.3e}"


def test_stock_sglang_decodes_what_the_plain_decoder_decodes(base_model, stock_run, reference_steps):
    """The plain decoder (the LowConfidence rule of tests/e2e/test_reference_decoder.py over the reference logits)
    run along the server's trajectory: every step's decisions turn the ids the server's step saw into the ids its
    next step saw, and the last step's into the output. By induction, the plain decoder alone decodes the output."""
    prompt, output, _ = stock_run
    config = json.loads((base_model / "config.json").read_text())
    mask_id = config["mask_token_id"]
    low_confidence_step = load_reference_decoder().low_confidence_step
    decoded = 0
    for n, (h, ids, ref) in enumerate(reference_steps):
        block = ids[h:]
        masked = [j for j, t in enumerate(block) if t == mask_id]
        if not masked:
            continue
        unmask, _ = low_confidence_step(ref.float(), masked, mask_id, THRESHOLD)
        for j, token in unmask.items():
            block[j] = token
        following = reference_steps[n + 1][1][h:] if n + 1 < len(reference_steps) else None
        if following is not None and reference_steps[n + 1][0] == h:
            assert block == following, f"step {n}: the plain decoder unmasked {unmask}"
        decoded += len(unmask)
    committed = prompt + output
    assert decoded == len(output) == MAX_NEW_TOKENS
    assert block == committed[h:h + BLOCK_SIZE], "the last decision does not give the output's block"
