"""Tiny random-weight block-diffusion checkpoints, built offline for tests and development.

`python -m sglang_focus.tiny_models sdar OUT_DIR` writes a checkpoint SGLang 0.5.23 loads with its own model
class: config.json (declaring `mask_token_id` and `block_size`), model.safetensors and the tokenizer.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sglang_focus.tokenizer import SAMPLE_TEXT, save_tokenizer, train_tokenizer

TINY_VOCAB = 512


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
    weights = {"model.embed_tokens.weight": rand(cfg["vocab_size"], h), "model.norm.weight": torch.ones(h)}
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
    out_dir = Path(out_dir)
    special = _tiny_tokenizer(out_dir)
    cfg = sdar_config(vocab_size=TINY_VOCAB, special=special, **overrides)
    _write_checkpoint(out_dir, cfg, random_sdar_weights(cfg, seed))
    return out_dir


def _write_checkpoint(out_dir: Path, cfg: dict, weights: dict[str, torch.Tensor]) -> None:
    (out_dir / "config.json").write_text(json.dumps(cfg, indent=2))
    generation = {"eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2))
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / "model.safetensors"))


BUILDERS = {"sdar": build_tiny_sdar}


def main() -> None:
    parser = argparse.ArgumentParser(description="Build a tiny random block-diffusion checkpoint.")
    parser.add_argument("arch", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(BUILDERS[args.arch](args.out_dir, seed=args.seed))


if __name__ == "__main__":
    main()
