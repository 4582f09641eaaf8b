"""Stock SGLang `--dllm-algorithm LowConfidence` decodes the tiny SDAR checkpoint exactly like an independent reference.

The reference below is plain PyTorch (weights read with `safetensors`, no SGLang or transformers model code). It
mirrors what SGLang 0.5.23 computes on the CPU engine (torch_native attention, FDFO scheduling, the default):

* Blocks sit on a fixed grid of absolute positions [k*B, (k+1)*B) counted from the first prompt token
  (B = `block_size` from config.json, via our plugin). Every scheduler round extends one block
  (`PrefillAdder._get_dllm_extend_len`, page size = B). Prompt-only blocks get one forward and are done; the block
  holding the end of the prompt (or the first all-new block, when the prompt length is a multiple of B) is the
  prompt's tail followed by mask tokens (`Req._init_fill_ids_for_dllm`). Positions are absolute
  (`ForwardBatch.init_new`, dLLM branch).
* SDAR attention is `ENCODER_ONLY`, so torch_native runs it non-causally over [cached prefix KV + current block]
  (`TorchNativeAttnBackend.forward_extend`): a token sees every earlier block and its whole own block. Prompt tokens
  in a partial block therefore attend to the masks/draft tokens after them, and their KV changes each step.
* FDFO: one forward then one `LowConfidence.step` per round (`DllmAlgorithm._run_fdfo`). The step computes `done`
  from the ids the forward saw, so the block that has just been filled gets one more forward with its final ids,
  and that forward's KV is what later blocks read (`finish_dllm_forward` commits KV only for done blocks).
  Recomputing the whole sequence with a block-causal mask is therefore equivalent: a block's keys/values depend
  only on the final ids of itself and earlier blocks.
* Step: the plugin sets the mask token's logit to -inf (patches/dllm_algorithm_low_confidence.py); then
  confidence = softmax probability of the argmax; masked positions with confidence > threshold take their
  argmax, and if there are none, the single most confident masked position does.
* Output: the block's tokens after the committed prompt/output (`process_batch_result_dllm`), whole blocks, cut to
  max_new_tokens by `finished_len`. Requests set `ignore_eos` (with EOS, the output would end at the first EOS
  inside the accepted block; the block is decoded in full either way).

Two deliberate settings: the server runs with `--dtype float32` (under `--dtype auto` SGLang serves a float32
checkpoint in float16, configs/model_config.py `_get_and_verify_dtype`, and the tokens drift from a float32
reference). The tiny checkpoint's final RMSNorm weight is FINAL_NORM_SCALE, so decoding mixes multi-token
threshold steps with top-1 fallback steps (checked below).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from sglang_focus.bench.local_server import LocalServer
from sglang_focus.training.tiny_models import build_tiny_sdar

pytestmark = pytest.mark.e2e

THRESHOLD = 0.8
MAX_NEW_TOKENS = 32  # two blocks of 16
PROMPT_LENGTHS = (5, 16, 23, 40)  # shorter than a block, exactly one, one and a bit, two full blocks and a bit
FIRST_ORDINARY_ID = 4  # 0..3 are pad, bos, eos and mask in the tiny tokenizer



class TinySdar:
    """Config and float32 weights of an HF-layout SDAR checkpoint."""

    def __init__(self, model_dir: Path):
        self.cfg = json.loads((Path(model_dir) / "config.json").read_text())
        self.w = {k: v.float() for k, v in load_file(str(Path(model_dir) / "model.safetensors")).items()}
        self.block_size = int(self.cfg["block_size"])
        self.mask_id = int(self.cfg["mask_token_id"])
        self.eps = float(self.cfg["rms_norm_eps"])
        self.head_dim = int(self.cfg["head_dim"])
        self.num_heads = int(self.cfg["num_attention_heads"])
        self.num_kv_heads = int(self.cfg["num_key_value_heads"])

    def lm_head(self) -> torch.Tensor:
        return self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])  # tied embeddings


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half (NeoX) RoPE over the full head dim; x is [tokens, heads, head_dim]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    angles = positions.float()[:, None] * inv_freq[None, :]
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def block_causal_visibility(num_tokens: int, block_size: int) -> torch.Tensor:
    """visible[i, j]: query i sees key j iff j's block is not after i's (bidirectional inside a block)."""
    block = torch.arange(num_tokens) // block_size
    return block[None, :] <= block[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """GQA attention with an explicit [tokens, tokens] visibility mask; q [T, H, D], k/v [T, KV, D] -> [T, H*D]."""
    num_tokens, num_heads, head_dim = q.shape
    group = num_heads // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q, k) * head_dim ** -0.5
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(num_tokens, num_heads * head_dim)


def layer_forward(model: TinySdar, i: int, h: torch.Tensor, positions: torch.Tensor,
                  visible: torch.Tensor) -> torch.Tensor:
    w, p, eps, d = model.w, f"model.layers.{i}.", model.eps, model.head_dim
    x = rms_norm(h, w[p + "input_layernorm.weight"], eps)
    q = (x @ w[p + "self_attn.q_proj.weight"].T).view(-1, model.num_heads, d)
    k = (x @ w[p + "self_attn.k_proj.weight"].T).view(-1, model.num_kv_heads, d)
    v = (x @ w[p + "self_attn.v_proj.weight"].T).view(-1, model.num_kv_heads, d)
    q = rope(rms_norm(q, w[p + "self_attn.q_norm.weight"], eps), positions, model.cfg["rope_theta"])
    k = rope(rms_norm(k, w[p + "self_attn.k_norm.weight"], eps), positions, model.cfg["rope_theta"])
    h = h + attention(q, k, v, visible) @ w[p + "self_attn.o_proj.weight"].T
    x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
    gate, up = x @ w[p + "mlp.gate_proj.weight"].T, x @ w[p + "mlp.up_proj.weight"].T
    return h + (F.silu(gate) * up) @ w[p + "mlp.down_proj.weight"].T


def model_logits(model: TinySdar, ids: list[int]) -> torch.Tensor:
    """Logits [len(ids), vocab] of the whole sequence under block-causal attention (recomputed from scratch)."""
    positions = torch.arange(len(ids))
    visible = block_causal_visibility(len(ids), model.block_size)
    h = model.w["model.embed_tokens.weight"][torch.tensor(ids)]
    for i in range(model.cfg["num_hidden_layers"]):
        h = layer_forward(model, i, h, positions, visible)
    return rms_norm(h, model.w["model.norm.weight"], model.eps) @ model.lm_head().T


def low_confidence_step(logits: torch.Tensor, masked: list[int], mask_id: int,
                        threshold: float) -> tuple[dict[int, int], dict[int, float]]:
    """{position: token} to unmask in one step, and the confidences of the masked positions."""
    logits = logits.clone()
    logits[:, mask_id] = float("-inf")
    confidence, token = logits.softmax(-1).max(-1)
    conf = {j: float(confidence[j]) for j in masked}
    chosen = [j for j in masked if conf[j] > threshold] or [max(masked, key=lambda j: conf[j])]
    return {j: int(token[j]) for j in chosen}, conf


def reference_generate(model: TinySdar, prompt: list[int], max_new_tokens: int, threshold: float,
                       trace: list | None = None) -> list[int]:
    """Greedy block-diffusion decoding of `model` on SGLang's absolute block grid (`block_diffusion_decode`)."""
    return block_diffusion_decode(lambda ids: model_logits(model, ids), prompt, max_new_tokens, threshold,
                                  block_size=model.block_size, mask_id=model.mask_id, trace=trace)


def block_diffusion_decode(logits_of, prompt: list[int], max_new_tokens: int, threshold: float, *,
                           block_size: int, mask_id: int, trace: list | None = None) -> list[int]:
    """Greedy block-diffusion decoding on SGLang's absolute block grid, for any model: `logits_of(ids)` returns the
    [len(ids), vocab] logits of the whole sequence under block-causal attention. `trace` gets (unmasked,
    confidences) per step."""
    bs = block_size
    committed = list(prompt)  # prompt + generated tokens, final ids only
    output: list[int] = []
    while len(output) < max_new_tokens:
        start = len(committed) // bs * bs  # the block holding the first uncommitted position
        first_new = len(committed) - start
        block = committed[start:] + [mask_id] * (bs - first_new)
        while masked := [j for j in range(first_new, bs) if block[j] == mask_id]:
            logits = logits_of(committed[:start] + block)[start:]
            unmask, conf = low_confidence_step(logits, masked, mask_id, threshold)
            for j, tok in unmask.items():
                block[j] = tok
            if trace is not None:
                trace.append((len(unmask), conf))
        # SGLang runs one more forward with the finished block's final ids; its KV equals what the block-causal
        # recomputation of the next round derives from `committed`.
        committed = committed[:start] + block
        output += block[first_new:]
    return output[:max_new_tokens]



def prompt_ids(length: int, seed: int) -> list[int]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(FIRST_ORDINARY_ID, 512, (length,), generator=gen).tolist()


PROMPTS = {n: prompt_ids(n, seed=100 + n) for n in PROMPT_LENGTHS}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model_dir = build_tiny_sdar(tmp_path_factory.mktemp("ref_tiny_sdar"))
    return model_dir


@pytest.fixture(scope="module")
def reference(checkpoint) -> dict[int, tuple[list[int], list]]:
    model = TinySdar(checkpoint)
    assert model.block_size == 16 and model.mask_id == 3
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest and does not fight the server for the CPU
    try:
        for n, prompt in PROMPTS.items():
            trace: list = []
            out[n] = (reference_generate(model, prompt, MAX_NEW_TOKENS, THRESHOLD, trace), trace)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref_server")
    yaml_path = tmp / "low_confidence.yaml"
    yaml_path.write_text(yaml.safe_dump({"threshold": THRESHOLD}))
    srv = LocalServer(checkpoint, ["--dllm-algorithm", "LowConfidence", "--dllm-algorithm-config", str(yaml_path),
                                   "--max-running-requests", "4", "--dtype", "float32"],
                      log_path=tmp / "server.log").start()
    yield srv
    srv.stop()


def sampling_params() -> dict:
    return {"max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}


def closest_call(trace: list) -> float:
    """Smallest |confidence - threshold| the reference met: how far float noise is from flipping a decision."""
    return min(abs(c - THRESHOLD) for _, conf in trace for c in conf.values())


def test_reference_exercises_threshold_and_fallback_steps(reference):
    steps = [n for _, trace in reference.values() for n, _ in trace]
    assert max(steps) > 1, "no step unmasked several tokens: the threshold path is not covered"
    assert 1 in steps, "no top-1 fallback step: the fallback path is not covered"


@pytest.mark.parametrize("length", PROMPT_LENGTHS)
def test_single_request_matches_reference(server, reference, length):
    resp = server.generate({"input_ids": PROMPTS[length], "sampling_params": sampling_params()})
    assert resp.status_code == 200, resp.text
    got = resp.json()["output_ids"]
    expected, trace = reference[length]
    assert len(expected) == MAX_NEW_TOKENS and 3 not in expected
    assert got == expected, f"prompt of {length} tokens; reference's closest call to the threshold " \
                            f"{closest_call(trace):.2e}"


def test_batched_requests_match_reference(server, reference):
    """All prompts in one request: FDFO batches them, each at its own block and step."""
    resp = server.generate({"input_ids": [PROMPTS[n] for n in PROMPT_LENGTHS], "sampling_params": sampling_params()})
    assert resp.status_code == 200, resp.text
    got = [item["output_ids"] for item in resp.json()]
    assert got == [reference[n][0] for n in PROMPT_LENGTHS]
