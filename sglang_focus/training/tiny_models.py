"""Tiny random-weight block-diffusion checkpoints, built offline for tests and development.

`python -m sglang_focus.training.tiny_models {sdar,llada2} OUT_DIR` writes a checkpoint SGLang 0.5.23 loads with its
own model class: config.json (declaring `mask_token_id` and `block_size`), model.safetensors and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sglang_focus.training.tokenizer import SAMPLE_TEXT, save_tokenizer, train_tokenizer

TINY_VOCAB = 512
# The final RMSNorm weight is this constant instead of 1 (a logit temperature of 1/16). With plain random weights
# the softmax is nearly uniform (top probability ~0.01), so threshold unmasking would never fire and every step
# would decode one token; at 16 the tiny SDAR decodes about 1.7 tokens per forward at threshold 0.8 (10% of a
# 16-token block, like real dLLMs), mixing multi-token threshold steps with top-1 fallbacks.
FINAL_NORM_SCALE = 16.0


def _tiny_tokenizer(out_dir: Path) -> dict[str, int]:
    return save_tokenizer(train_tokenizer([SAMPLE_TEXT] * 4, TINY_VOCAB), out_dir, model_max_length=2048)


def sdar_config(*, vocab_size: int, special: dict[str, int], hidden: int = 64, layers: int = 4,
                heads: int = 4, kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                block_size: int = 16, tie_word_embeddings: bool = True, max_positions: int = 2048) -> dict:
    """A Qwen3-shaped SDAR config; `model_type` qwen3 lets transformers parse it without remote code."""
    return {
        "architectures": ["SDARForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": max_positions,
        "tie_word_embeddings": tie_word_embeddings,
        "attention_bias": False,
        "torch_dtype": "float32",
        "bos_token_id": special["bos"],
        "eos_token_id": special["eos"],
        "pad_token_id": special["pad"],
        "mask_token_id": special["mask"],
        "block_size": block_size,
    }


def random_sdar_weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """HF-layout SDAR weights (q/k/v/gate/up unfused), normal(0, 0.05) with unit norms."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.05

    h, d = cfg["hidden_size"], cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    weights = {"model.embed_tokens.weight": rand(cfg["vocab_size"], h),
               "model.norm.weight": torch.full((h,), FINAL_NORM_SCALE)}
    if not cfg["tie_word_embeddings"]:
        weights["lm_head.weight"] = rand(cfg["vocab_size"], h)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "self_attn.q_proj.weight": rand(q_out, h),
            p + "self_attn.k_proj.weight": rand(kv_out, h),
            p + "self_attn.v_proj.weight": rand(kv_out, h),
            p + "self_attn.o_proj.weight": rand(h, q_out),
            p + "self_attn.q_norm.weight": torch.ones(d),
            p + "self_attn.k_norm.weight": torch.ones(d),
            p + "mlp.gate_proj.weight": rand(cfg["intermediate_size"], h),
            p + "mlp.up_proj.weight": rand(cfg["intermediate_size"], h),
            p + "mlp.down_proj.weight": rand(h, cfg["intermediate_size"]),
            p + "input_layernorm.weight": torch.ones(h),
            p + "post_attention_layernorm.weight": torch.ones(h),
        })
    return weights


def build_tiny_sdar(out_dir: Path, *, seed: int = 0, **overrides) -> Path:
    """Write a random tiny SDAR checkpoint to `out_dir` and return it."""
    return _build(Path(out_dir), sdar_config, random_sdar_weights, seed, overrides)


def _build(out_dir: Path, make_config, make_weights, seed: int, overrides: dict) -> Path:
    """Tokenizer, config (with that tokenizer's special ids) and random weights, written to `out_dir`."""
    special = _tiny_tokenizer(out_dir)
    cfg = make_config(vocab_size=TINY_VOCAB, special=special, **overrides)
    _write_checkpoint(out_dir, cfg, make_weights(cfg, seed))
    return out_dir


def llada2_config(*, vocab_size: int, special: dict[str, int], hidden: int = 64, layers: int = 4,
                  heads: int = 4, kv_heads: int = 2, head_dim: int = 16, intermediate: int = 128,
                  moe_intermediate: int = 32, num_experts: int = 8, experts_per_tok: int = 2,
                  num_shared_experts: int = 1, first_k_dense_replace: int = 1, n_group: int = 4,
                  topk_group: int = 2, routed_scaling_factor: float = 2.5, partial_rotary_factor: float = 0.5,
                  block_size: int = 16, tie_word_embeddings: bool = False, max_positions: int = 2048) -> dict:
    """A LLaDA2.0-mini-shaped MoE config (sigmoid router with expert bias, grouped top-k, one shared expert,
    dense first layer, qk-norm, fused query_key_value, half-rotary RoPE) at toy size.

    The real checkpoints declare `model_type` llada2_moe, which only their remote code defines. `qwen3_moe` lets
    transformers parse this one without remote code: Qwen3MoeConfig keeps every field it does not define as a
    plain attribute, and the fields it does define (num_experts, num_experts_per_tok, moe_intermediate_size,
    norm_topk_prob, head_dim, ...) mean the same thing here. Only rope_theta moves into `rope_parameters`, which
    SGLang's `get_rope_config` reads. SGLang picks the model class from `architectures` alone.
    """
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "qwen3_moe",
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_bias": False,
        "use_qk_norm": True,
        "norm_head": False,
        "rms_norm_eps": 1e-6,
        "rope_theta": 600000.0,
        "partial_rotary_factor": partial_rotary_factor,
        "max_position_embeddings": max_positions,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
        "num_experts": num_experts,
        "num_experts_per_tok": experts_per_tok,
        "num_shared_experts": num_shared_experts,
        "moe_intermediate_size": moe_intermediate,
        "first_k_dense_replace": first_k_dense_replace,
        "n_group": n_group,
        "topk_group": topk_group,
        "routed_scaling_factor": routed_scaling_factor,
        "norm_topk_prob": True,
        "score_function": "sigmoid",
        "moe_router_enable_expert_bias": True,
        "router_dtype": "fp32",
        "output_router_logits": False,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": special["bos"],
        "eos_token_id": special["eos"],
        "pad_token_id": special["pad"],
        "mask_token_id": special["mask"],
        "block_size": block_size,
    }


def random_llada2_weights(cfg: dict, seed: int, *, router_std: float = 0.5,
                          head_std: float = 0.05) -> dict[str, torch.Tensor]:
    """HF-layout LLaDA2 weights: fused `attention.query_key_value`, `attention.dense`, per-expert
    gate/up/down projections, `mlp.gate.weight` + fp32 `mlp.gate.expert_bias`, `mlp.shared_experts.*`,
    `model.word_embeddings`, `lm_head`. normal(0, 0.05) with unit norms; the router uses `router_std` so that
    different tokens pick different experts. The final norm is FINAL_NORM_SCALE, so confidences are peaked.
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.05) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * std

    def mlp(prefix: str, inner: int) -> dict[str, torch.Tensor]:
        return {
            prefix + "gate_proj.weight": rand(inner, h),
            prefix + "up_proj.weight": rand(inner, h),
            prefix + "down_proj.weight": rand(h, inner),
        }

    h, d = cfg["hidden_size"], cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    num_experts, moe_inner = cfg["num_experts"], cfg["moe_intermediate_size"]
    weights = {"model.word_embeddings.weight": rand(cfg["vocab_size"], h),
               "model.norm.weight": torch.full((h,), FINAL_NORM_SCALE)}
    if not cfg["tie_word_embeddings"]:
        weights["lm_head.weight"] = rand(cfg["vocab_size"], h, std=head_std)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        weights.update({
            p + "input_layernorm.weight": torch.ones(h),
            p + "attention.query_key_value.weight": rand(q_out + 2 * kv_out, h),
            p + "attention.query_layernorm.weight": torch.ones(d),
            p + "attention.key_layernorm.weight": torch.ones(d),
            p + "attention.dense.weight": rand(h, q_out),
            p + "post_attention_layernorm.weight": torch.ones(h),
        })
        if i < cfg["first_k_dense_replace"]:
            weights.update(mlp(p + "mlp.", cfg["intermediate_size"]))
            continue
        weights[p + "mlp.gate.weight"] = rand(num_experts, h, std=router_std)
        weights[p + "mlp.gate.expert_bias"] = rand(num_experts)
        for e in range(num_experts):
            weights.update(mlp(p + f"mlp.experts.{e}.", moe_inner))
        if cfg["num_shared_experts"]:
            weights.update(mlp(p + "mlp.shared_experts.", moe_inner * cfg["num_shared_experts"]))
    return weights


def build_tiny_llada2(out_dir: Path, *, seed: int = 0, **overrides) -> Path:
    """Write a random tiny LLaDA2 (MoE) checkpoint to `out_dir` and return it."""
    return _build(Path(out_dir), llada2_config, random_llada2_weights, seed, overrides)


def _write_checkpoint(out_dir: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> None:
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    generation = {"eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / "model.safetensors"))


BUILDERS = {"sdar": build_tiny_sdar, "llada2": build_tiny_llada2}


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random block-diffusion checkpoint.")
    parser.add_argument("arch", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(BUILDERS[args.arch](args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
