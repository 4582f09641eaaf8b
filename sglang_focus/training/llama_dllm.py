"""The converted SmolLM2 (a dense LLaDA2-layout Llama) in plain PyTorch, with a LoRA adapter, for block-diffusion
fine-tuning and for decoding without SGLang.

`LlamaDllm.from_checkpoint(models/smollm2-base, rank=16)` loads the float32 base frozen and adds trainable parts:
LoRA (A [r, in], B [out, r], B = 0 at start, scale alpha / r) on q, k, v, o, gate, up and down of every layer, every
RMSNorm weight, and the mask token's embedding row. `adapter_state()` is what is saved and committed (a few MB per
rank); `merged_weights()` folds it into the LLaDA2-layout tensors SGLang loads (`convert_smollm2 --adapter`).

Attention is block-causal (a query sees every earlier block and its whole own block); `hidden()` takes any boolean
visibility [L, L] or [b, L, L] (True = attend), so the training loss can also hide padding keys. Logits are
`hidden @ embedding.T` (tied) with the mask column at -inf: the mask token is never a prediction, as on the servers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")


class LlamaShape(NamedTuple):
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    eps: float
    vocab: int  # mask token included
    mask_id: int
    block_size: int

    @classmethod
    def from_config(cls, cfg: Mapping) -> "LlamaShape":
        return cls(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   heads=cfg["num_attention_heads"], kv_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                   rope_theta=float(cfg["rope_theta"]), eps=float(cfg["rms_norm_eps"]), vocab=cfg["vocab_size"],
                   mask_id=cfg["mask_token_id"], block_size=cfg["block_size"])


class LoraLinear(nn.Module):
    """y = x W^T + scale · (x A^T) B^T with W frozen; A, B trainable (None when rank is 0)."""

    def __init__(self, weight: torch.Tensor, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        self.register_buffer("weight", weight, persistent=False)
        self.scale = alpha / rank if rank else 0.0
        out_features, in_features = weight.shape
        self.lora_a = nn.Parameter(torch.randn(rank, in_features, generator=gen) / math.sqrt(in_features)) if rank else None
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank)) if rank else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight)
        if self.lora_a is not None:
            y = y + F.linear(F.linear(x, self.lora_a), self.lora_b) * self.scale
        return y

    def merged(self) -> torch.Tensor:
        if self.lora_a is None:
            return self.weight
        return self.weight + (self.lora_b @ self.lora_a) * self.scale


class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., L, head_dim] for rotate-half (NeoX) RoPE over the whole head."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [b, heads, L, d]; cos/sin [b or 1, 1, L, d]."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Layer(nn.Module):
    def __init__(self, shape: LlamaShape, w: Mapping[str, torch.Tensor], prefix: str, rank: int, alpha: float,
                 gen: torch.Generator):
        super().__init__()
        self.shape = shape
        q_rows, kv_rows = shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
        q, k, v = w[prefix + "attention.query_key_value.weight"].split([q_rows, kv_rows, kv_rows])
        lora = lambda weight: LoraLinear(weight, rank, alpha, gen)  # noqa: E731
        self.q, self.k, self.v = lora(q), lora(k), lora(v)
        self.o = lora(w[prefix + "attention.dense.weight"])
        self.gate, self.up = lora(w[prefix + "mlp.gate_proj.weight"]), lora(w[prefix + "mlp.up_proj.weight"])
        self.down = lora(w[prefix + "mlp.down_proj.weight"])
        self.input_norm = RMSNorm(w[prefix + "input_layernorm.weight"], shape.eps)
        self.post_norm = RMSNorm(w[prefix + "post_attention_layernorm.weight"], shape.eps)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], visible: torch.Tensor,
                qk_sink: list | None = None) -> torch.Tensor:
        b, n, _ = h.shape
        s = self.shape
        x = self.input_norm(h)
        q = self.q(x).view(b, n, s.heads, s.head_dim).transpose(1, 2)
        k = self.k(x).view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        v = self.v(x).view(b, n, s.kv_heads, s.head_dim).transpose(1, 2)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if qk_sink is not None:
            qk_sink.append((q.transpose(1, 2), k.transpose(1, 2)))
        mask = visible if visible.dim() == 4 else visible.view(-1, 1, n, n)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        h = h + self.o(att.transpose(1, 2).reshape(b, n, s.heads * s.head_dim))
        x = self.post_norm(h)
        return h + self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaDllm(nn.Module):
    """The base, frozen, plus the trainable adapter (see the module docstring)."""

    def __init__(self, shape: LlamaShape, weights: Mapping[str, torch.Tensor], *, rank: int, alpha: float,
                 seed: int = 0):
        super().__init__()
        self.shape, self.rank, self.alpha = shape, rank, alpha
        gen = torch.Generator().manual_seed(seed)
        embed = weights["model.word_embeddings.weight"]
        self.register_buffer("embed", embed, persistent=False)  # [V, H] frozen; row mask_id replaced below
        self.mask_row = nn.Parameter(embed[shape.mask_id].clone())
        self.layers = nn.ModuleList(Layer(shape, weights, f"model.layers.{i}.", rank, alpha, gen)
                                    for i in range(shape.layers))
        self.norm = RMSNorm(weights["model.norm.weight"], shape.eps)

    @classmethod
    def from_checkpoint(cls, model_dir: Path, *, rank: int = 16, alpha: float | None = None,
                        seed: int = 0) -> "LlamaDllm":
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        weights = load_file(str(Path(model_dir) / "model.safetensors"))
        model = cls(LlamaShape.from_config(cfg), weights, rank=rank, alpha=2.0 * rank if alpha is None else alpha,
                    seed=seed)
        model.requires_grad_(False)
        for _, param in model.trainable_named():
            param.requires_grad_(True)
        return model

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """[..., L] -> [..., L, H]: the frozen embedding, the trainable row for the mask token."""
        h = F.embedding(ids, self.embed)
        return torch.where((ids == self.shape.mask_id)[..., None], self.mask_row, h)

    @property
    def cfg(self) -> dict:
        """The decoding keys `train.block_diffusion_generate` and the analysis tools read."""
        return {"block_size": self.shape.block_size, "mask_token_id": self.shape.mask_id,
                "num_hidden_layers": self.shape.layers}

    def hidden(self, ids: torch.Tensor, visible: torch.Tensor, positions: torch.Tensor | None = None,
               qk_sink: list | None = None) -> torch.Tensor:
        """ids [b, L] -> final-norm hidden [b, L, H]; `positions` [L] or [b, L], default 0..L-1. `qk_sink`, when
        given, receives per layer (q [b, L, heads, d], k [b, L, kv_heads, d]) after RoPE."""
        b, n = ids.shape
        if positions is None:
            positions = torch.arange(n)
        cos, sin = rope_tables(positions.expand(b, n), self.shape.head_dim, self.shape.rope_theta)
        rope = (cos[:, None], sin[:, None])
        h = self.embed_ids(ids)
        for layer in self.layers:
            h = layer(h, rope, visible, qk_sink)
        return self.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., H] -> [..., V] with the mask column at -inf."""
        logits = hidden @ self.embed.T
        logits[..., self.shape.mask_id] = float("-inf")
        return logits

    def trainable_named(self) -> Iterator[tuple[str, nn.Parameter]]:
        """The adapter's parameters in a fixed order: LoRA factors, norm weights, the mask row."""
        for name, param in self.named_parameters():
            if name.endswith(("lora_a", "lora_b")) or name.endswith("norm.weight") or name == "mask_row":
                yield name, param

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {name: param.detach().clone() for name, param in self.trainable_named()}

    def load_adapter_state(self, state: Mapping[str, torch.Tensor]) -> None:
        own = dict(self.trainable_named())
        if set(own) != set(state):
            raise ValueError(f"adapter mismatch: missing {sorted(set(own) - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - set(own))[:3]}")
        with torch.no_grad():
            for name, value in state.items():
                own[name].copy_(value)

    def merged_weights(self) -> dict[str, torch.Tensor]:
        """The LLaDA2-layout float32 tensors of base + adapter, as `convert_smollm2` writes them."""
        embed = self.embed.clone()
        embed[self.shape.mask_id] = self.mask_row.detach()
        out = {"model.word_embeddings.weight": embed, "model.norm.weight": self.norm.weight.detach()}
        for i, layer in enumerate(self.layers):
            p = f"model.layers.{i}."
            merged = {t: getattr(layer, t).merged().detach() for t in LORA_TARGETS}
            out.update({
                p + "input_layernorm.weight": layer.input_norm.weight.detach(),
                p + "attention.query_key_value.weight": torch.cat([merged["q"], merged["k"], merged["v"]]),
                p + "attention.dense.weight": merged["o"],
                p + "post_attention_layernorm.weight": layer.post_norm.weight.detach(),
                p + "mlp.gate_proj.weight": merged["gate"],
                p + "mlp.up_proj.weight": merged["up"],
                p + "mlp.down_proj.weight": merged["down"],
            })
        return {k: v.contiguous().clone() for k, v in out.items()}


def block_causal_visibility(num_tokens: int, block_size: int) -> torch.Tensor:
    """[L, L] bool: query i sees key j iff j's block is not after i's."""
    block = torch.arange(num_tokens) // block_size
    return block[None, :] <= block[:, None]
