"""FOCUS on the server decodes token for token what a plain-PyTorch FOCUS decoder written from the spec decodes.

The reference runs one request at a time on the bundled checkpoint (float32), without the delayed cache, keeping
its own per-layer KV for the current block so that evicted rows are attended through stale KV exactly as
FOCUS_SPEC §4.7-4.8 describes: layer 0 on every block row, layer-1 KV written for every row and then eviction by
the importance delta (kernels' PyTorch references), layers 2..L on the kept rows only, keys up to the rightmost
kept row, unmasking among kept masked rows. If the server matches it, FOCUS's quality on the bundled model is the
algorithm's, not a defect of the integration. With `budget_reset: request` (sent per request) the reference carries
the budget counters S and N from block to block.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from sglang_focus import kernels
from sglang_focus.bench.local_server import LocalServer
from sglang_focus.kernels.reference import importance_reference, select_enforce_reference
from sglang_focus.training import tasks
from sglang_focus.training.tokenizer import EOS_TOKEN
from sglang_focus.training.train import (apply_rope, block_causal_visibility, block_diffusion_generate,
                                         load_checkpoint, rope_tables)

pytestmark = pytest.mark.e2e

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "sdar-tasks"
THRESHOLD, ALPHA, MAX_NEW_TOKENS = 0.8, 1.5, 48


def qkv(layer, h, rope):
    attn = layer.self_attn
    x = layer.input_layernorm(h)
    t = x.shape[0]
    q = apply_rope(attn.q_norm(attn.q_proj(x).view(1, t, attn.heads, attn.head_dim)), *rope)[0]
    k = apply_rope(attn.k_norm(attn.k_proj(x).view(1, t, attn.kv_heads, attn.head_dim)), *rope)[0]
    v = attn.v_proj(x).view(t, attn.kv_heads, attn.head_dim)
    return q, k, v


def attend(layer, q, keys, values):
    """Queries [n, H, d] over keys/values [s, H_kv, d], all visible (the block is bidirectional, the prefix earlier)."""
    attn = layer.self_attn
    group = attn.heads // attn.kv_heads
    k, v = keys.repeat_interleave(group, 1), values.repeat_interleave(group, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
    return attn.o_proj(out.transpose(0, 1).reshape(q.shape[0], -1))


def finish_layer(layer, h, attn_out):
    h = h + attn_out
    return h + layer.mlp(layer.post_attention_layernorm(h))


def prefix_kv(model, committed: list[int], start: int):
    """Per-layer (K, V) of the committed tokens before `start`, as a block-causal forward computes them."""
    h = model.model.embed_tokens(torch.tensor(committed[:start]))
    rope = rope_tables(torch.arange(start), model.cfg["head_dim"], model.cfg["rope_theta"])
    visible = block_causal_visibility(start, model.cfg["block_size"])
    kvs = []
    for layer in model.model.layers:
        q, k, v = qkv(layer, h, rope)
        kvs.append((k, v))
        group = layer.self_attn.heads // layer.self_attn.kv_heads
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k.repeat_interleave(group, 1).transpose(0, 1),
                                             v.repeat_interleave(group, 1).transpose(0, 1), attn_mask=visible)
        h = finish_layer(layer, h, layer.self_attn.o_proj(out.transpose(0, 1).reshape(start, -1)))
    return kvs


class BlockState:
    def __init__(self, block_size: int, num_layers: int, earlier: tuple[int, int] = (0, 0)):
        self.kv = [[None] * block_size for _ in range(num_layers)]  # per layer, per position: (k [H_kv, d], v)
        self.progress, self.unmasked, self.decoding_steps, self.steps = -1, 0, 0, 0
        self.earlier = earlier  # (S, N) of the request's earlier blocks when the budget runs over the request

    def keys(self, layer: int, prefix, upto: int):
        rows = self.kv[layer][:upto + 1]
        assert all(r is not None for r in rows), "an attended block slot was never written (KV invariant)"
        k = torch.cat([prefix[layer][0], torch.stack([r[0] for r in rows])])
        v = torch.cat([prefix[layer][1], torch.stack([r[1] for r in rows])])
        return k, v

    def write(self, layer: int, rows: list[int], k, v):
        for i, p in enumerate(rows):
            self.kv[layer][p] = (k[i], v[i])


def importance(q, k, rows):
    cu = torch.tensor([0, len(rows)], dtype=torch.int32)
    return importance_reference(q[rows], k[rows], cu, sm_scale=1.0 / math.sqrt(q.shape[-1]))


def focus_step(model, block: list[int], start: int, prefix, state: BlockState, first_new: int, mask_id: int):
    """One FOCUS forward over the block; returns {position: token} decoded."""
    bs = len(block)
    layers = model.model.layers
    rope = rope_tables(torch.arange(start, start + bs), model.cfg["head_dim"], model.cfg["rope_theta"])
    masked = [p for p in range(first_new, bs) if block[p] == mask_id]
    h = model.model.embed_tokens(torch.tensor(block))
    q, k, v = qkv(layers[0], h, rope)
    state.write(0, list(range(bs)), k, v)
    h = finish_layer(layers[0], h, attend(layers[0], q, *state.keys(0, prefix, bs - 1)))
    i0 = importance(q, k, masked)
    q, k, v = qkv(layers[1], h, rope)
    state.write(1, list(range(bs)), k, v)
    i1 = importance(q, k, masked)
    budget = kernels.budget_targets(torch.tensor([len(masked)]),
                                    kernels.average_decoded(torch.tensor([state.earlier[0] + state.unmasked]),
                                                            torch.tensor([state.earlier[1] + state.decoding_steps])),
                                    torch.tensor([ALPHA], dtype=torch.float64))
    prefill = state.steps == 0 and first_new > 0  # a block holding prompt tokens never evicts on its first step
    if bool(budget.evict[0]) and not prefill:
        keep = select_enforce_reference(i1 - i0, torch.tensor(masked, dtype=torch.int32),
                                        torch.tensor([0, len(masked)], dtype=torch.int32), budget.target,
                                        budget.evict, torch.tensor([state.progress], dtype=torch.int32))
        kept_masked = [p for p, kept in zip(masked, keep.tolist()) if kept]
    else:
        kept_masked = masked
    rows = sorted(set(kept_masked) | {p for p in range(bs) if p not in masked})
    right = rows[-1]
    h, q = h[rows], q[rows]
    rope_kept = (rope[0][rows], rope[1][rows])
    h = finish_layer(layers[1], h, attend(layers[1], q, *state.keys(1, prefix, right)))
    for index in range(2, len(layers)):
        q, k, v = qkv(layers[index], h, rope_kept)
        state.write(index, rows, k, v)
        h = finish_layer(layers[index], h, attend(layers[index], q, *state.keys(index, prefix, right)))
    logits = model.logits(model.model.norm(h)).float()
    logits[:, mask_id] = float("-inf")
    confidence, token = logits.softmax(-1).max(-1)
    candidates = [(rows.index(p), p) for p in kept_masked]
    chosen = [(i, p) for i, p in candidates if confidence[i] > THRESHOLD]
    chosen = chosen or [max(candidates, key=lambda c: float(confidence[c[0]]))]
    state.steps += 1
    state.unmasked += len(chosen)
    state.decoding_steps += 1
    state.progress = max(state.progress, right)
    return {p: int(token[i]) for i, p in chosen}


@torch.inference_mode()
def focus_generate(model, prompt: list[int], eos_id: int, *, carry_budget: bool = False) -> list[int]:
    bs, mask_id = model.cfg["block_size"], model.cfg["mask_token_id"]
    committed, output, earlier = list(prompt), [], (0, 0)
    while len(output) < MAX_NEW_TOKENS:
        start = len(committed) // bs * bs
        first_new = len(committed) - start
        block = committed[start:] + [mask_id] * (bs - first_new)
        prefix, state = prefix_kv(model, committed, start), BlockState(bs, len(model.model.layers), earlier)
        while any(block[p] == mask_id for p in range(first_new, bs)):
            for p, tok in focus_step(model, block, start, prefix, state, first_new, mask_id).items():
                block[p] = tok
        if carry_budget:
            earlier = (earlier[0] + state.unmasked, earlier[1] + state.decoding_steps)
        committed = committed[:start] + block
        output += block[first_new:]
        if eos_id in block[first_new:]:
            return output[:output.index(eos_id) + 1]
    return output[:MAX_NEW_TOKENS]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cfg = tmp_path_factory.mktemp("focus_ref") / "focus.yaml"
    cfg.write_text(yaml.safe_dump({"threshold": THRESHOLD, "alpha": ALPHA, "delayed_cache": False,
                                   "min_batch_tokens": 0}))
    with LocalServer(BUNDLED, ["--focus", "--focus-config", str(cfg), "--dtype", "float32",
                               "--max-running-requests", "4"]) as srv:
        yield srv


@pytest.mark.parametrize("budget_reset", ["block", "request"])
def test_server_focus_matches_the_spec_reference_token_for_token(server, budget_reset):
    """The server decodes what the reference decodes, for each budget_reset (sent per request).

    To show the check can tell the variants apart, some output must differ from the simpler decoder: stock
    LowConfidence for `block`, the per-block budget reference for `request`.
    """
    torch.set_num_threads(1)
    model, tokenizer = load_checkpoint(BUNDLED)
    model.eval()
    eos = tokenizer.token_to_id(EOS_TOKEN)
    carry = budget_reset == "request"
    sampling = {"max_new_tokens": MAX_NEW_TOKENS, "custom_params": {"focus": {"budget_reset": budget_reset}}}
    problems = [p for p in tasks.generate("heldout", 30, seed="0") if p.task in ("reverse", "sort")][:8]
    evicted = differs = 0
    for problem in problems:
        prompt, _ = tasks.encode_problem(tokenizer, problem)
        resp = server.generate({"input_ids": prompt, "sampling_params": sampling})
        assert resp.status_code == 200, resp.text
        item = resp.json()
        evicted += item["meta_info"]["focus_stats"]["evicted"]
        expected = focus_generate(model, prompt, eos, carry_budget=carry)
        got = item["output_ids"]
        assert got == expected, (
            f"{problem.prompt}\nserver:    {tokenizer.decode(got)}\nreference: {tokenizer.decode(expected)}")
        simpler = (focus_generate(model, prompt, eos) if carry else
                   block_diffusion_generate(model, prompt, threshold=THRESHOLD, max_new_tokens=MAX_NEW_TOKENS,
                                            eos_id=eos).ids)
        differs += simpler != expected
    assert evicted > 0, "the comparison must exercise eviction"
    assert differs > 0, (f"budget_reset {budget_reset}: no output differs from the simpler decoder, so the check "
                         "could not tell them apart")
