"""Train a small SDAR block-diffusion model on the synthetic task suite, on the CPU, in plain PyTorch.

`python -m sglang_focus.training.train --out DIR [--steps N] [--resume] [--layers 8] [--hidden 256] ...` writes an
HF-layout checkpoint SGLang 0.5.23 serves with its own SDAR class (config.json, model.safetensors, tokenizer
files, as `training.tiny_models` writes them), plus `train_state.pt` (model, optimizer, step) for `--resume` and
`train_log.jsonl` (one line per logged step).

Objective (block diffusion, as SDAR): the sequence is chat prompt + answer (ending with `<|im_end|>`, padded with
`<|endoftext|>` to a block boundary), cut into blocks of B tokens from position 0. Each sample picks one block
holding answer tokens, keeps earlier blocks clean, masks each answer position of that block with probability
t ~ U(0.1, 1) (prompt tokens are never masked) and predicts the masked tokens. Attention is block-causal: a query
sees every earlier block and its whole own block. Later blocks are invisible, so each sample is cut after its block.

`block_diffusion_generate` is the matching greedy LowConfidence decoder (same semantics as the independent
reference in tests/e2e/test_reference_decoder.py), for checking quality without SGLang.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer
from torch import nn
from tqdm import tqdm

from sglang_focus.training import tasks
from sglang_focus.training.tiny_models import _write_checkpoint, sdar_config
from sglang_focus.training.tokenizer import EOS_TOKEN

MIN_MASK_RATIO = 0.1
VOCAB_MULTIPLE = 64
IGNORE = -100
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"
# the model shape when neither a flag nor --init-from gives it (head_dim / intermediate 0: hidden / heads, 3 * hidden)
ARCHITECTURE_DEFAULTS = {"layers": 8, "hidden": 256, "heads": 4, "kv_heads": 2, "head_dim": 0, "intermediate": 0,
                         "block_size": 32}


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [tokens, head_dim // 2] for absolute `positions` [tokens]."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    angles = positions.float()[:, None] * inv_freq[None, :]
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half (NeoX) RoPE over the full head dim; x is [batch, tokens, heads, head_dim]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, None, :], sin[:, None, :]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h, d = cfg["hidden_size"], cfg["head_dim"]
        self.heads, self.kv_heads, self.head_dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], d
        self.q_proj = nn.Linear(h, self.heads * d, bias=False)
        self.k_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.v_proj = nn.Linear(h, self.kv_heads * d, bias=False)
        self.o_proj = nn.Linear(self.heads * d, h, bias=False)
        self.q_norm = RMSNorm(d, cfg["rms_norm_eps"])
        self.k_norm = RMSNorm(d, cfg["rms_norm_eps"])

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], visible: torch.Tensor,
                qk_sink: list | None = None) -> torch.Tensor:
        """`qk_sink`, when given, receives (q, k) after q/k-norm and RoPE ([b, t, heads|kv_heads, head_dim])."""
        b, t, _ = x.shape
        q = apply_rope(self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim)), *rope)
        k = apply_rope(self.k_norm(self.k_proj(x).view(b, t, self.kv_heads, self.head_dim)), *rope)
        if qk_sink is not None:
            qk_sink.append((q, k))
        v = self.v_proj(x).view(b, t, self.kv_heads, self.head_dim)
        group = self.heads // self.kv_heads  # head i reads kv head i // group, as in HF
        k, v = k.repeat_interleave(group, 2), v.repeat_interleave(group, 2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=visible)  # [b, heads, t, head_dim]
        return self.o_proj(out.transpose(1, 2).reshape(b, t, self.heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        h, inner = cfg["hidden_size"], cfg["intermediate_size"]
        self.gate_proj = nn.Linear(h, inner, bias=False)
        self.up_proj = nn.Linear(h, inner, bias=False)
        self.down_proj = nn.Linear(inner, h, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
        self.mlp = Mlp(cfg)

    def forward(self, h: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], visible: torch.Tensor,
                qk_sink: list | None = None) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), rope, visible, qk_sink)
        return h + self.mlp(self.post_attention_layernorm(h))


class SdarBody(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class SdarLM(nn.Module):
    """Qwen3-shaped SDAR with tied embeddings; parameter names are the HF checkpoint names."""

    def __init__(self, cfg: dict, init_std: float = 0.02):
        super().__init__()
        self.cfg = cfg
        self.model = SdarBody(cfg)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, std=init_std)

    def hidden(self, ids: torch.Tensor, visible: torch.Tensor, positions: torch.Tensor | None = None,
               qk_sink: list | None = None) -> torch.Tensor:
        """Final-normed hidden states [batch, tokens, hidden] of ids [batch, tokens] under `visible` [t, t], at
        `positions` [t] (default 0..t-1). `qk_sink`, when given, receives each layer's (q, k) in layer order."""
        positions = torch.arange(ids.shape[1], device=ids.device) if positions is None else positions
        rope = rope_tables(positions, self.cfg["head_dim"], self.cfg["rope_theta"])
        h = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            h = layer(h, rope, visible, qk_sink)
        return self.model.norm(h)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden @ self.model.embed_tokens.weight.T


def block_causal_visibility(num_tokens: int, block_size: int) -> torch.Tensor:
    """visible[i, j]: query i sees key j iff j's block is not after i's (bidirectional inside a block)."""
    block = torch.arange(num_tokens) // block_size
    return block[None, :] <= block[:, None]


def two_stream_visibility(num_tokens: int, block_size: int) -> torch.Tensor:
    """Visibility over [noisy copy; clean copy] (2 * num_tokens keys): a noisy block sees its own noisy block and
    the clean blocks before it; the clean copy is block-causal and never sees the noisy one (BD3-LM layout)."""
    block = torch.arange(num_tokens) // block_size
    same, before = block[:, None] == block[None, :], block[None, :] < block[:, None]
    top = torch.cat([same, before], dim=1)
    bottom = torch.cat([torch.zeros_like(same), block_causal_visibility(num_tokens, block_size)], dim=1)
    return torch.cat([top, bottom], dim=0)


class Example(NamedTuple):
    prompt: list[int]  # chat-templated prompt ids
    answer: list[int]  # answer ids ending with <|im_end|>


class NoisedSample(NamedTuple):
    noisy: list[int]  # ids with masked answer positions (possibly cut after the last noised block)
    clean: list[int]  # the same positions unmasked
    targets: list[int]  # clean id where masked, IGNORE elsewhere
    ratio: list[float]  # mask probability t of each position's block (1.0 where not noised)
    maskable: int  # answer positions in the noised blocks


class DiffusionBatch(NamedTuple):
    input_ids: torch.Tensor  # [b, t] int64: model input (noisy ids; for "all_blocks", noisy then clean copy)
    targets: torch.Tensor  # [b, t] int64: clean id where masked, IGNORE elsewhere
    ratio: torch.Tensor  # [b, t] float32: t of each position's block
    maskable: float  # answer positions in all noised blocks (normaliser of the 1/t-weighted loss)
    positions: torch.Tensor  # [t] int64: absolute positions (the clean copy repeats the noisy copy's)
    visible: torch.Tensor  # [t, t] bool: attention visibility


def padded_sequence(ex: Example, block_size: int, pad_id: int) -> list[int]:
    """prompt + answer, padded with `pad_id` to a block boundary (pads after <|im_end|> are targets too)."""
    seq = ex.prompt + ex.answer
    return seq + [pad_id] * (-len(seq) % block_size)


def noise_blocks(ex: Example, blocks: Sequence[int], *, block_size: int, mask_id: int, pad_id: int,
                 gen: torch.Generator) -> NoisedSample:
    """Mask the answer positions of each of `blocks` with its own t ~ U(MIN_MASK_RATIO, 1) (at least one each)."""
    clean = padded_sequence(ex, block_size, pad_id)
    noisy, targets, ratio, maskable = list(clean), [IGNORE] * len(clean), [1.0] * len(clean), 0
    for block in blocks:
        lo, end = max(block * block_size, len(ex.prompt)), (block + 1) * block_size
        t = MIN_MASK_RATIO + (1 - MIN_MASK_RATIO) * float(torch.rand((), generator=gen))
        masked = torch.rand(end - lo, generator=gen) < t
        if not masked.any():
            masked[int(torch.randint(end - lo, (1,), generator=gen))] = True
        for j in (lo + torch.nonzero(masked).flatten()).tolist():
            targets[j], noisy[j] = clean[j], mask_id
        ratio[lo:end], maskable = [t] * (end - lo), maskable + end - lo
    return NoisedSample(noisy, clean, targets, ratio, maskable)


def answer_blocks(ex: Example, block_size: int) -> range:
    """Indices of the blocks holding answer tokens (the prompt's tail block included)."""
    return range(len(ex.prompt) // block_size, -(-(len(ex.prompt) + len(ex.answer)) // block_size))


def noise_example(ex: Example, *, block_size: int, mask_id: int, pad_id: int, gen: torch.Generator) -> NoisedSample:
    """One uniformly chosen answer block noised; the sample is cut after it (later blocks are invisible)."""
    choices = answer_blocks(ex, block_size)
    block = choices[int(torch.randint(len(choices), (1,), generator=gen))]
    sample = noise_blocks(ex, [block], block_size=block_size, mask_id=mask_id, pad_id=pad_id, gen=gen)
    end = (block + 1) * block_size
    return NoisedSample(*(field[:end] for field in sample[:4]), sample.maskable)


def _pad_rows(rows: Sequence[list], width: int, fill) -> torch.Tensor:
    return torch.tensor([row + [fill] * (width - len(row)) for row in rows])


def make_batch(examples: Sequence[Example], *, block_size: int, mask_id: int, pad_id: int,
               gen: torch.Generator, objective: str = "one_block") -> DiffusionBatch:
    """A training batch. "one_block": one noised block per sample, block-causal attention (the SDAR objective as
    served). "all_blocks": every answer block noised at once, the noisy copy attending to a clean copy."""
    if objective == "one_block":
        samples = [noise_example(ex, block_size=block_size, mask_id=mask_id, pad_id=pad_id, gen=gen)
                   for ex in examples]
    else:
        samples = [noise_blocks(ex, answer_blocks(ex, block_size), block_size=block_size, mask_id=mask_id,
                                pad_id=pad_id, gen=gen) for ex in examples]
    width = max(len(s.noisy) for s in samples)
    ids = _pad_rows([s.noisy for s in samples], width, pad_id)
    targets = _pad_rows([s.targets for s in samples], width, IGNORE)
    ratio = _pad_rows([s.ratio for s in samples], width, 1.0).float()
    maskable = float(sum(s.maskable for s in samples))
    if objective == "one_block":
        return DiffusionBatch(ids, targets, ratio, maskable, torch.arange(width),
                              block_causal_visibility(width, block_size))
    clean = _pad_rows([s.clean for s in samples], width, pad_id)
    return DiffusionBatch(torch.cat([ids, clean], 1), torch.cat([targets, torch.full_like(targets, IGNORE)], 1),
                          torch.cat([ratio, torch.ones_like(ratio)], 1), maskable,
                          torch.arange(width).repeat(2), two_stream_visibility(width, block_size))


def batch_to(batch: DiffusionBatch, device: torch.device | str) -> DiffusionBatch:
    """The batch's tensors on `device` (batches are built on the CPU, from CPU-seeded generators)."""
    return batch._replace(**{name: getattr(batch, name).to(device) for name in batch._fields
                             if isinstance(getattr(batch, name), torch.Tensor)})


def diffusion_loss(model: SdarLM, batch: DiffusionBatch, *, weighting: str = "none",
                   hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """(loss to minimise, mean cross-entropy over masked tokens). `inv_t` weights each token by 1/t of its block
    and normalises by the maskable positions (the masked-diffusion ELBO); `none` is the plain masked mean. `hidden`:
    the model's final hidden state for the batch when the caller already has it."""
    if hidden is None:
        hidden = model.hidden(batch.input_ids, batch.visible, batch.positions)
    where = batch.targets != IGNORE
    ce = F.cross_entropy(model.logits(hidden[where]), batch.targets[where], reduction="none")
    loss = (ce / batch.ratio[where]).sum() / batch.maskable if weighting == "inv_t" else ce.mean()
    return loss, float(ce.detach().mean())


class GenerationResult(NamedTuple):
    ids: list[int]  # generated ids (through the first EOS when eos_id is given)
    steps: int  # denoising forwards (each unmasks >= 1 token)
    blocks: int  # blocks decoded; SGLang runs one extra forward per block to commit its KV
    decoded: int  # tokens unmasked, including those after EOS in the last block


class DenoisingStep(NamedTuple):
    """What one denoising forward of `block_diffusion_generate` saw and did (for `on_step` observers)."""

    start: int  # absolute position of the block's first token
    masked: list[int]  # block positions still masked before the step (ascending)
    chosen: dict[int, int]  # block position -> token decoded at this step
    qk: list  # per layer (q [1, t, heads, d], k [1, t, kv_heads, d]) after q/k-norm and RoPE, whole sequence


@torch.inference_mode()
def block_diffusion_generate(model: SdarLM, prompt: Sequence[int], *, threshold: float = 0.8,
                             max_new_tokens: int = 128, eos_id: int | None = None,
                             on_step: Callable[[DenoisingStep], None] | None = None) -> GenerationResult:
    """Greedy LowConfidence decoding on SGLang's fixed block grid (from position 0), recomputing the whole
    sequence with block-causal attention each step (equal to SGLang's KV-cached FDFO rounds). `on_step`, when
    given, is called after every denoising forward."""
    bs, mask_id = model.cfg["block_size"], model.cfg["mask_token_id"]
    committed, output, steps, blocks, decoded = list(prompt), [], 0, 0, 0
    while len(output) < max_new_tokens:
        start = len(committed) // bs * bs
        first_new = len(committed) - start
        block = committed[start:] + [mask_id] * (bs - first_new)
        while masked := [j for j in range(first_new, bs) if block[j] == mask_id]:
            ids = torch.tensor([committed[:start] + block])
            qk_sink = [] if on_step else None
            hidden = model.hidden(ids, block_causal_visibility(ids.shape[1], bs), qk_sink=qk_sink)
            chosen = low_confidence_choice(model.logits(hidden[0, start:]), masked, mask_id, threshold)
            if on_step:
                on_step(DenoisingStep(start, masked, chosen, qk_sink))
            for j, tok in chosen.items():
                block[j] = tok
            steps, decoded = steps + 1, decoded + len(masked) - block.count(mask_id)
        committed, blocks = committed[:start] + block, blocks + 1
        output += block[first_new:]
        if eos_id is not None and eos_id in block[first_new:]:
            output = output[:output.index(eos_id) + 1]
            break
    return GenerationResult(output[:max_new_tokens], steps, blocks, decoded)


def low_confidence_choice(logits: torch.Tensor, masked: list[int], mask_id: int, threshold: float) -> dict[int, int]:
    """{block position: token}: masked positions above `threshold`, else the single most confident one."""
    logits = logits.float().clone()
    logits[:, mask_id] = float("-inf")
    confidence, token = logits.softmax(-1).max(-1)
    chosen = [j for j in masked if confidence[j] > threshold] or [max(masked, key=lambda j: float(confidence[j]))]
    return {j: int(token[j]) for j in chosen}


class EvalReport(NamedTuple):
    accuracy: float
    per_task: dict[str, float]
    tokens_per_step: float  # mean tokens unmasked per denoising forward
    n: int
    seconds: float


def evaluate(model: SdarLM, tokenizer: Tokenizer, problems: Sequence[tasks.Problem], *,
             threshold: float = 0.8, max_new_tokens: int = 128) -> EvalReport:
    """Exact-match accuracy of `block_diffusion_generate` on `problems`."""
    eos = tokenizer.token_to_id(EOS_TOKEN)
    began, hits, decoded, steps = time.perf_counter(), {}, 0, 0
    model.eval()
    for problem in problems:
        prompt, _ = tasks.encode_problem(tokenizer, problem)
        result = block_diffusion_generate(model, prompt, threshold=threshold, max_new_tokens=max_new_tokens,
                                          eos_id=eos)
        text = tokenizer.decode(result.ids, skip_special_tokens=False)
        hits.setdefault(problem.task, []).append(tasks.is_correct(problem, text))
        decoded, steps = decoded + result.decoded, steps + result.steps
    model.train()
    per_task = {task: sum(v) / len(v) for task, v in hits.items()}
    total = [h for v in hits.values() for h in v]
    return EvalReport(sum(total) / max(1, len(total)), per_task, decoded / max(1, steps), len(total),
                      time.perf_counter() - began)


def model_config(args: argparse.Namespace, vocab_size: int, special: dict[str, int]) -> dict:
    """The SDAR config.json of the model `args` describe, naming the task suite it is trained on."""
    heads = args.heads
    config = sdar_config(vocab_size=-(-vocab_size // VOCAB_MULTIPLE) * VOCAB_MULTIPLE, special=special,
                       hidden=args.hidden, layers=args.layers, heads=heads, kv_heads=args.kv_heads,
                       head_dim=args.head_dim or args.hidden // heads,
                       intermediate=args.intermediate or 3 * args.hidden, block_size=args.block_size)
    return {**config, tasks.SUITE_CONFIG_KEY: args.task_suite}


def prepare_tokenizer(out: Path, *, suite: str, seed: int, reuse: bool) -> tuple[Tokenizer, dict[str, int]]:
    """The tokenizer of task `suite`, built and saved into `out` (or reused from there when resuming)."""
    path = out / "tokenizer.json"
    tokenizer = (Tokenizer.from_file(str(path)) if reuse and path.exists()
                 else tasks.build_task_tokenizer(tasks.SUITES[suite], seed=seed))
    return tokenizer, tasks.save_task_tokenizer(tokenizer, out)


def init_from_checkpoint(init_dir: Path, out: Path, *, suite: str) -> tuple[SdarLM, Tokenizer, dict[str, int]]:
    """Fine-tuning start: the weights, architecture and tokenizer of the exported checkpoint in `init_dir`, to be
    trained on task `suite` (recorded in the new config). The tokenizer is copied into `out`; the new suite's
    words must already be in it, so a suite that needs other words must be trained from scratch."""
    init_dir = Path(init_dir)
    if not (init_dir / "model.safetensors").exists():
        raise SystemExit(f"--init-from {init_dir}: no model.safetensors there (an exported checkpoint is needed)")
    model, tokenizer = load_checkpoint(init_dir)
    model.cfg = {**model.cfg, tasks.SUITE_CONFIG_KEY: suite}
    return model, tokenizer, tasks.save_task_tokenizer(tokenizer, out)


def resolve_architecture(args: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Fill the architecture flags with their defaults; with --init-from the checkpoint's config.json gives the
    architecture (the model's cfg, also its block size), so none of them may be given."""
    given = [f"--{name.replace('_', '-')}" for name in ARCHITECTURE_DEFAULTS if getattr(args, name) is not None]
    if args.init_from:
        if given:
            parser.error(f"--init-from takes the architecture from {args.init_from}/config.json; "
                         f"drop {', '.join(given)}")
        return args
    for name, default in ARCHITECTURE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    return args


def training_examples(tokenizer: Tokenizer, *, suite: str, seed: int, step: int, batch_size: int) -> list[Example]:
    """The training problems of `step`: a function of (seed, step) only, so `--resume` sees the same data."""
    problems = tasks.generate("train", batch_size, seed=f"{seed}:{step}", tasks=tasks.SUITES[suite])
    orders = random.Random(f"answers:{seed}:{step}")
    return [Example(*tasks.encode_problem(tokenizer, p, tasks.training_answer(p, orders))) for p in problems]


def lr_at(step: int, *, lr: float, warmup: int, total: int, min_ratio: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: SdarLM, *, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() == 2]
    rest = [p for p in model.parameters() if p.dim() != 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95))


def export_checkpoint(model: SdarLM, out: Path) -> None:
    """config.json, generation_config.json and model.safetensors in the layout SGLang's SDAR class loads."""
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    _write_checkpoint(Path(out), model.cfg, weights)


def load_checkpoint(model_dir: Path) -> tuple[SdarLM, Tokenizer]:
    """An exported checkpoint back as an `SdarLM` and its tokenizer."""
    model_dir = Path(model_dir)
    model = SdarLM(json.loads((model_dir / "config.json").read_text()))
    model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
    return model, Tokenizer.from_file(str(model_dir / "tokenizer.json"))


def save_state(out: Path, model: SdarLM, opt: torch.optim.Optimizer, step: int) -> None:
    export_checkpoint(model, out)
    tmp = out / (STATE_FILE + ".tmp")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step, "cfg": model.cfg}, tmp)
    tmp.replace(out / STATE_FILE)


def train_step(model: SdarLM, opt: torch.optim.Optimizer, batch: DiffusionBatch, *, lr: float,
               weighting: str = "none", clip: float = 1.0) -> float:
    """One AdamW step at learning rate `lr`; returns the mean masked cross-entropy before the step."""
    loss, ce = diffusion_loss(model, batch, weighting=weighting)
    descend(model, opt, loss, lr=lr, clip=clip)
    return ce


def descend(model: nn.Module, opt: torch.optim.Optimizer, loss: torch.Tensor, *, lr: float, clip: float = 1.0) -> None:
    """One optimizer step on `loss` at learning rate `lr`, gradients clipped to norm `clip`."""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def train(args: argparse.Namespace) -> Path:
    """Train (or resume) into `args.out`; returns the checkpoint directory."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.init_from:
        model, tokenizer, special = init_from_checkpoint(args.init_from, out, suite=args.task_suite)
    else:
        tokenizer, special = prepare_tokenizer(out, suite=args.task_suite, seed=args.seed, reuse=args.resume)
        model = SdarLM(model_config(args, tokenizer.get_vocab_size(), special))
    model.to(args.device)
    opt = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    step = resume_state(out, model, opt) if args.resume else 0
    began, log = time.perf_counter(), (out / LOG_FILE).open("a")
    if args.init_from and step == 0:
        log.write(json.dumps({"init_from": Path(args.init_from).name, "task_suite": args.task_suite}) + "\n")
    last = min(args.steps, args.until or args.steps)  # the schedule still spans --steps
    bar = tqdm(range(step, last), initial=step, total=last, desc="train", dynamic_ncols=True)
    for step in bar:
        batch = make_batch(training_examples(tokenizer, suite=args.task_suite, seed=args.seed, step=step,
                                             batch_size=args.batch_size),
                           block_size=model.cfg["block_size"], mask_id=special["mask"], pad_id=special["pad"],
                           gen=torch.Generator().manual_seed(args.seed * 1_000_003 + step), objective=args.objective)
        lr = lr_at(step, lr=args.lr, warmup=args.warmup, total=args.steps, min_ratio=args.min_lr_ratio)
        ce = train_step(model, opt, batch_to(batch, args.device), lr=lr, weighting=args.weighting)
        bar.set_postfix(loss=f"{ce:.3f}", lr=f"{lr:.2e}")
        out_of_time = args.max_minutes and time.perf_counter() - began > 60 * args.max_minutes
        log.write(json.dumps({"step": step + 1, "loss": round(ce, 5), "lr": lr,
                              "seconds": round(time.perf_counter() - began, 2)}) + "\n")
        if (step + 1) % args.save_every == 0 or step + 1 == last or out_of_time:
            save_state(out, model, opt, step + 1)
            log.flush()
        if args.eval_every and (step + 1) % args.eval_every == 0:
            report_eval(model, tokenizer, args, step + 1, log)
        if out_of_time:
            break
    log.close()
    return out


def resume_state(out: Path, model: SdarLM, opt: torch.optim.Optimizer) -> int:
    path = out / STATE_FILE
    if not path.exists():
        return 0
    state = torch.load(path, weights_only=False, map_location=next(model.parameters()).device)
    if state["cfg"] != model.cfg:
        raise SystemExit(f"--resume: {path} was trained with another model config")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def report_eval(model: SdarLM, tokenizer: Tokenizer, args: argparse.Namespace, step: int, log) -> EvalReport:
    problems = tasks.generate("heldout", args.eval_n, seed=args.seed, tasks=tasks.config_suite(model.cfg))
    on_cpu = model if next(model.parameters()).device.type == "cpu" else copy.deepcopy(model).cpu()
    report = evaluate(on_cpu, tokenizer, problems, threshold=args.eval_threshold)
    record = {"step": step, "heldout_accuracy": report.accuracy, "per_task": report.per_task,
              "tokens_per_step": round(report.tokens_per_step, 3), "n": report.n,
              "eval_seconds": round(report.seconds, 1)}
    tqdm.write(json.dumps(record))
    log.write(json.dumps(record) + "\n")
    log.flush()
    return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train an SDAR block-diffusion model on the synthetic task suite (CPU).")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory (HF layout + train_state.pt)")
    p.add_argument("--steps", type=int, default=3000, help="total optimizer steps (the cosine schedule's length)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--until", type=int, default=0,
                   help="stop after this step (0: --steps); the learning-rate schedule still spans --steps")
    p.add_argument("--task-suite", choices=tuple(tasks.SUITES), default=tasks.NEWEST_SUITE,
                   help="the task families to train on (recorded in config.json)")
    p.add_argument("--init-from", type=Path, default=None,
                   help="fine-tune: start from this exported checkpoint's weights, architecture and tokenizer "
                        "(a fresh optimizer and schedule; --resume continues such a run)")
    p.add_argument("--layers", type=int, help=f"default {ARCHITECTURE_DEFAULTS['layers']}")
    p.add_argument("--hidden", type=int, help=f"default {ARCHITECTURE_DEFAULTS['hidden']}")
    p.add_argument("--heads", type=int, help=f"default {ARCHITECTURE_DEFAULTS['heads']}")
    p.add_argument("--kv-heads", type=int, help=f"default {ARCHITECTURE_DEFAULTS['kv_heads']}")
    p.add_argument("--head-dim", type=int, help="default hidden / heads")
    p.add_argument("--intermediate", type=int, help="default 3 * hidden")
    p.add_argument("--block-size", type=int, help=f"default {ARCHITECTURE_DEFAULTS['block_size']}")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--weighting", choices=("none", "inv_t"), default="none", help="per-token loss weight")
    p.add_argument("--objective", choices=("one_block", "all_blocks"), default="one_block",
                   help="one noised block per sample, or every answer block at once against a clean copy")
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--eval-every", type=int, default=0, help="held-out accuracy every N steps (0: only at the end)")
    p.add_argument("--eval-n", type=int, default=50)
    p.add_argument("--eval-threshold", type=float, default=0.8)
    p.add_argument("--eval-only", action="store_true", help="evaluate OUT's exported checkpoint and exit")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much training time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu",
                   help="where to train, e.g. cuda (evaluation and the exported files stay on the CPU)")
    p.add_argument("--seed", type=int, default=0)
    args = resolve_architecture(p.parse_args(argv), p)
    try:
        torch.empty(0, device=args.device)
    except (RuntimeError, AssertionError) as exc:  # an unknown device name, or no such device here
        p.error(f"--device {args.device}: {str(exc).splitlines()[0]}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if not args.eval_only:
        train(args)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(args.out)
    state = Path(args.out) / STATE_FILE
    step = torch.load(state, weights_only=False, map_location="cpu")["step"] if state.exists() else -1
    with (Path(args.out) / LOG_FILE).open("a") as log:
        report_eval(model, tokenizer, args, step=step, log=log)


if __name__ == "__main__":
    main()
