"""Forward microbenchmark of an SDAR-shaped decoder with random weights: stock vs FOCUS, per batch and kept fraction.

    python -m sglang_focus.bench.forward [--preset sdar-8b|bundled|tiny] [--batch-sizes 32,64,128,256]
        [--kept-fractions 1.0,0.25,0.1] [--context-len N] [--repeats 10] [--warmup 3]
        [--dtype bf16|fp16|fp32] [--device cuda|cpu] [--cpu-threads N] [--out DIR]

The decoder is Qwen3-like, as SDAR is: pre-norm RMSNorm, q/k RMSNorm, RoPE (neox halves), GQA attention and a
SwiGLU MLP, one residual stream. It measures the denoising forward of one block of ``B`` rows per request; the token
embedding, final norm and vocabulary-sized LM head are left out (the input is random hidden states
``[bs, B, hidden]``), so the time is the decoder layers only. Each layer has a KV cache ``[bs, context + B, H_kv, d]``
whose first ``context`` rows (the request's history) are filled randomly once; the block occupies the last ``B``
rows and every query attends all ``context + B`` keys, non-causally (an upper bound on FOCUS's ``h + max(P') + 1``).

Arms, on the same weights and inputs:

- ``stock``: all ``B`` rows through all ``L`` layers, each layer writing the block's KV.
- ``focus``: layer 0 on all rows, then the importance of every row (all rows are masked candidates) with
  ``sglang_focus.kernels.importance`` on post-RoPE q/k; layer 1's QKV projection and KV write for all rows and the
  importance again; ``delta = I1 - I0``; ``sglang_focus.kernels.select_enforce`` (target ``ceil(f·B)``, every
  request evicting, progress ``B - 1``) runs for its real cost. **Simplification:** its ragged keep mask is not used;
  instead every request keeps a fixed ``k = max(1, round(f·B))`` rows, the top-``k`` of ``delta`` in ascending block
  position, so the batch stays dense ``[bs, k]``. The kept rows of the residual stream and of layer 1's q are
  gathered; layer 1's attention and MLP and layers ``2..L-1`` run on them only (later layers write KV for kept rows
  only and attend all keys, stale ones included).
- ``focus_oracle``: the ``focus`` arm with its kept rows given up front (no importance, no select), so
  ``overhead = focus - focus_oracle`` is the cost of scoring, selection and compaction.

Before a batch size is timed, the ``focus`` arm at kept fraction 1.0 must reproduce the ``stock`` output
(``assert_close`` at the dtype's tolerance). Timing: median over ``--repeats`` after ``--warmup`` calls, CUDA events
on a GPU, ``time.perf_counter`` on CPU. Kernels: Triton for CUDA tensors, the PyTorch reference on CPU.
Per (batch, kept fraction) it reports stock/focus/oracle ms, ``speedup = stock / focus``, the layer-count bound
``L / (2 + (L - 2)·k/B)`` and the share of it reached, and the overhead; prints a markdown table and writes
DIR/forward.json. Imports only torch, tqdm and ``sglang_focus.kernels`` (never SGLang).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sglang_focus.bench.kernels import add_cpu_threads_flag, apply_cpu_threads, environment, import_kernels
from sglang_focus.bench.kernels import int_list, markdown_table, median_ms, positive_int, resolve_device
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT

BUNDLED_CONFIG = EMBEDDED_DEFAULT / "config.json"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class DecoderShape(NamedTuple):
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    block_size: int  # B: rows of the denoised block per request
    context_len: int  # cached history tokens per request
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1e6


PRESETS = {
    "sdar-8b": DecoderShape(36, 4096, 32, 8, 128, 12288, block_size=32, context_len=512),
    "tiny": DecoderShape(4, 64, 4, 2, 16, 128, block_size=8, context_len=24, rope_theta=1e4),
}


def bundled_shape(config_path: Path = BUNDLED_CONFIG) -> DecoderShape:
    """The decoder shape of the bundled checkpoint's ``config.json`` (block size from ``block_size``, else 16)."""
    config = json.loads(config_path.read_text())
    return DecoderShape(
        num_layers=config["num_hidden_layers"],
        hidden_size=config["hidden_size"],
        num_heads=config["num_attention_heads"],
        num_kv_heads=config["num_key_value_heads"],
        head_dim=config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"],
        intermediate_size=config["intermediate_size"],
        block_size=config.get("block_size", 16),
        context_len=512,
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        rope_theta=config.get("rope_theta", 1e6),
    )


def preset_shape(name: str) -> DecoderShape:
    return bundled_shape() if name == "bundled" else PRESETS[name]


class LayerWeights(NamedTuple):
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(H + 2 H_kv) d, hidden]
    q_norm: torch.Tensor  # [d]
    k_norm: torch.Tensor  # [d]
    o: torch.Tensor  # [hidden, H d]
    post_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor  # [hidden, I]


class Decoder(NamedTuple):
    shape: DecoderShape
    layers: tuple[LayerWeights, ...]
    cache_k: tuple[torch.Tensor, ...]  # per layer [max_bs, context + B, H_kv, d]; block rows are written per forward
    cache_v: tuple[torch.Tensor, ...]
    rope_cos: torch.Tensor  # [context + B, d] for absolute positions 0..context+B-1
    rope_sin: torch.Tensor


def _random(gen: torch.Generator, *size: int, dtype: torch.dtype, device: torch.device, scale: float = 1.0):
    return (torch.randn(*size, generator=gen, device=device, dtype=torch.float32) * scale).to(dtype)


def random_layer(shape: DecoderShape, gen: torch.Generator, dtype: torch.dtype, device: torch.device) -> LayerWeights:
    """Weights scaled by ``1/sqrt(fan_in)`` so the residual stream stays O(1); norm weights are ones."""
    s, hidden, inter = shape, shape.hidden_size, shape.intermediate_size
    qkv_out = (s.num_heads + 2 * s.num_kv_heads) * s.head_dim
    ones = functools.partial(torch.ones, dtype=dtype, device=device)
    linear = functools.partial(_random, gen, dtype=dtype, device=device)
    return LayerWeights(
        input_norm=ones(hidden),
        qkv=linear(qkv_out, hidden, scale=hidden**-0.5),
        q_norm=ones(s.head_dim),
        k_norm=ones(s.head_dim),
        o=linear(hidden, s.num_heads * s.head_dim, scale=(s.num_heads * s.head_dim) ** -0.5),
        post_norm=ones(hidden),
        gate_up=linear(2 * inter, hidden, scale=hidden**-0.5),
        down=linear(hidden, inter, scale=inter**-0.5),
    )


def rope_tables(shape: DecoderShape, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    positions = torch.arange(shape.context_len + shape.block_size, device=device, dtype=torch.float32)
    inv_freq = shape.rope_theta ** (-torch.arange(0, shape.head_dim, 2, device=device).float() / shape.head_dim)
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat([angles, angles], dim=-1)  # [positions, d], neox halves
    return angles.cos().to(dtype), angles.sin().to(dtype)


def build_decoder(shape: DecoderShape, *, max_batch: int, dtype: torch.dtype, device: torch.device,
                  seed: int = 0) -> Decoder:
    gen = torch.Generator(device=device).manual_seed(seed)
    layers = tuple(random_layer(shape, gen, dtype, device) for _ in range(shape.num_layers))
    cache_size = (max_batch, shape.context_len + shape.block_size, shape.num_kv_heads, shape.head_dim)
    cache_k = tuple(_random(gen, *cache_size, dtype=dtype, device=device) for _ in layers)
    cache_v = tuple(_random(gen, *cache_size, dtype=dtype, device=device) for _ in layers)
    return Decoder(shape, layers, cache_k, cache_v, *rope_tables(shape, dtype, device))


def random_hidden(shape: DecoderShape, batch_size: int, dtype: torch.dtype, device: torch.device,
                  seed: int = 1) -> torch.Tensor:
    """Block input ``[bs, B, hidden]``, standing in for the token embeddings."""
    gen = torch.Generator(device=device).manual_seed(seed)
    return _random(gen, batch_size, shape.block_size, shape.hidden_size, dtype=dtype, device=device)


# Row selections: ``None`` means all B block rows; otherwise ``[bs, n]`` int64 block positions, ascending per row.
Rows = torch.Tensor | None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.float().pow(2).mean(-1, keepdim=True)
    return (x.float() * torch.rsqrt(variance + eps)).to(x.dtype) * weight


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x ``[bs, n, heads, d]``; cos/sin ``[1 or bs, n, 1, d]``."""
    return x * cos + _rotate_half(x) * sin


def rope_at(model: Decoder, rows: Rows) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin ``[1 or bs, n, 1, d]`` at the absolute positions ``context + block position`` of ``rows``."""
    context, block = model.shape.context_len, model.shape.block_size
    if rows is None:
        return model.rope_cos[None, context:context + block, None], model.rope_sin[None, context:context + block, None]
    return model.rope_cos[context + rows][:, :, None], model.rope_sin[context + rows][:, :, None]


class QKV(NamedTuple):
    q: torch.Tensor  # [bs, n, H, d], post q-norm and RoPE
    k: torch.Tensor  # [bs, n, H_kv, d], post k-norm and RoPE
    v: torch.Tensor  # [bs, n, H_kv, d]


def project_qkv(model: Decoder, layer: int, x: torch.Tensor, rows: Rows) -> QKV:
    """QKV projection, q/k-norm and RoPE of the rows ``x`` ``[bs, n, hidden]`` (at block positions ``rows``)."""
    s, w = model.shape, model.layers[layer]
    bs, n, _ = x.shape
    qkv = F.linear(rms_norm(x, w.input_norm, s.rms_norm_eps), w.qkv)
    q, k, v = qkv.split([s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.num_kv_heads * s.head_dim], -1)
    q = rms_norm(q.reshape(bs, n, s.num_heads, s.head_dim), w.q_norm, s.rms_norm_eps)
    k = rms_norm(k.reshape(bs, n, s.num_kv_heads, s.head_dim), w.k_norm, s.rms_norm_eps)
    cos, sin = rope_at(model, rows)
    return QKV(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v.reshape(bs, n, s.num_kv_heads, s.head_dim))


def write_kv(model: Decoder, layer: int, qkv: QKV, rows: Rows) -> None:
    """Mutates the layer's cache: the block rows ``rows`` of the first ``bs`` requests get ``qkv.k``/``qkv.v``."""
    bs, context = qkv.k.shape[0], model.shape.context_len
    cache_k, cache_v = model.cache_k[layer], model.cache_v[layer]
    if rows is None:
        cache_k[:bs, context:].copy_(qkv.k)
        cache_v[:bs, context:].copy_(qkv.v)
        return
    requests = torch.arange(bs, device=rows.device)[:, None]
    cache_k[requests, context + rows] = qkv.k
    cache_v[requests, context + rows] = qkv.v


@functools.lru_cache(maxsize=None)
def sdpa_has_gqa() -> bool:
    """Whether this torch's ``scaled_dot_product_attention`` takes ``enable_gqa`` (torch >= 2.5)."""
    probe = torch.zeros(1, 2, 1, 4)
    try:
        F.scaled_dot_product_attention(probe, probe[:, :1], probe[:, :1], enable_gqa=True)
    except TypeError:
        return False
    return True


def attend(model: Decoder, layer: int, q: torch.Tensor) -> torch.Tensor:
    """Non-causal attention of q ``[bs, n, H, d]`` over all ``context + B`` cached keys → ``[bs, n, H d]``."""
    bs, n = q.shape[:2]
    keys = model.cache_k[layer][:bs].transpose(1, 2)  # [bs, H_kv, context + B, d]
    values = model.cache_v[layer][:bs].transpose(1, 2)
    if sdpa_has_gqa():
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, enable_gqa=True)
    else:
        group = model.shape.num_heads // model.shape.num_kv_heads
        keys, values = keys.repeat_interleave(group, dim=1), values.repeat_interleave(group, dim=1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values)
    return out.transpose(1, 2).reshape(bs, n, -1)


def finish_layer(model: Decoder, layer: int, x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Attention (its KV already written), output projection and SwiGLU MLP, each with its residual add."""
    w, eps = model.layers[layer], model.shape.rms_norm_eps
    x = x + F.linear(attend(model, layer, q), w.o)
    gate, up = F.linear(rms_norm(x, w.post_norm, eps), w.gate_up).chunk(2, dim=-1)
    return x + F.linear(F.silu(gate) * up, w.down)


class ForwardResult(NamedTuple):
    hidden: torch.Tensor  # [bs, n, hidden]: output of the rows that ran the last layer
    query_rows: tuple[int, ...]  # per layer: query rows per request
    kv_rows: tuple[int, ...]  # per layer: rows per request whose KV was written
    kept_rows: torch.Tensor | None  # [bs, k] int64 block positions kept from layer 1 on; None for stock
    keep_mask: torch.Tensor | None  # [bs * B] bool from select_enforce (focus arm only; not applied)


def stock_forward(model: Decoder, x: torch.Tensor) -> ForwardResult:
    """All B block rows through all layers."""
    for layer in range(model.shape.num_layers):
        qkv = project_qkv(model, layer, x, None)
        write_kv(model, layer, qkv, None)
        x = finish_layer(model, layer, x, qkv.q)
    rows = (x.shape[1],) * model.shape.num_layers
    return ForwardResult(x, rows, rows, None, None)


class Eviction(NamedTuple):
    kept: int  # k: rows kept per request from layer 1 on
    target: int  # keep target passed to select_enforce


def eviction_for(kept_fraction: float, block_size: int) -> Eviction:
    return Eviction(kept=max(1, round(kept_fraction * block_size)),
                    target=min(block_size, max(1, math.ceil(kept_fraction * block_size))))


class Candidates(NamedTuple):
    """Every block row of every request as a masked candidate: the kernels' ragged layout, built once per batch."""

    positions: torch.Tensor  # [bs * B] int32, 0..B-1 per request
    cu_seqlens: torch.Tensor  # [bs + 1] int32, every B rows
    target: torch.Tensor  # [bs] int32
    evict: torch.Tensor  # [bs] bool, all true
    progress: torch.Tensor  # [bs] int32, B - 1


def block_candidates(batch_size: int, block_size: int, target: int, device: torch.device) -> Candidates:
    int32 = dict(dtype=torch.int32, device=device)
    return Candidates(
        positions=torch.arange(block_size, **int32).repeat(batch_size),
        cu_seqlens=torch.arange(0, batch_size * block_size + 1, block_size, **int32),
        target=torch.full((batch_size,), target, **int32),
        evict=torch.ones(batch_size, dtype=torch.bool, device=device),
        progress=torch.full((batch_size,), block_size - 1, **int32),
    )


def block_importance(kernels: ModuleType, qkv: QKV, candidates: Candidates) -> torch.Tensor:
    """Importance ``[bs * B]`` fp32 of every block row from post-RoPE q/k."""
    bs, block, heads, head_dim = qkv.q.shape
    return kernels.importance(qkv.q.reshape(bs * block, heads, head_dim),
                              qkv.k.reshape(bs * block, qkv.k.shape[2], head_dim),
                              candidates.cu_seqlens, sm_scale=head_dim**-0.5, max_m=block)


def select_rows(kernels: ModuleType, delta: torch.Tensor, candidates: Candidates,
                kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run select_enforce for its cost; return (its keep mask, the dense top-``kept`` rows ``[bs, kept]``)."""
    bs = candidates.target.shape[0]
    keep_mask = kernels.select_enforce(delta, candidates.positions, candidates.cu_seqlens, candidates.target,
                                       candidates.evict, candidates.progress, max_m=delta.shape[0] // bs)
    rows = torch.topk(delta.view(bs, -1), kept, dim=1).indices.sort(dim=1).values
    return keep_mask, rows


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[r, rows[r]]`` for ``x`` ``[bs, B, ...]`` and rows ``[bs, k]`` → ``[bs, k, ...]``."""
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2)))
    return torch.take_along_dim(x, index, dim=1)


def focus_forward(model: Decoder, x: torch.Tensor, kept: int, *, kernels: ModuleType | None = None,
                  candidates: Candidates | None = None, kept_rows: torch.Tensor | None = None) -> ForwardResult:
    """The ``focus`` arm (``kernels`` and ``candidates`` given) or, with ``kept_rows`` ``[bs, kept]``, the oracle.

    Mutates the KV cache: layers 0 and 1 write every block row, later layers only the kept ones.
    """
    scoring = kept_rows is None
    assert not scoring or (kernels is not None and candidates is not None), "the focus arm needs kernels, candidates"
    layers, block = model.shape.num_layers, x.shape[1]
    qkv = project_qkv(model, 0, x, None)
    write_kv(model, 0, qkv, None)
    importance0 = block_importance(kernels, qkv, candidates) if scoring else None
    x = finish_layer(model, 0, x, qkv.q)

    qkv = project_qkv(model, 1, x, None)
    write_kv(model, 1, qkv, None)
    keep_mask = None
    if scoring:
        delta = block_importance(kernels, qkv, candidates) - importance0
        keep_mask, kept_rows = select_rows(kernels, delta, candidates, kept)
    x = finish_layer(model, 1, gather_rows(x, kept_rows), gather_rows(qkv.q, kept_rows))

    for layer in range(2, layers):
        qkv = project_qkv(model, layer, x, kept_rows)
        write_kv(model, layer, qkv, kept_rows)
        x = finish_layer(model, layer, x, qkv.q)
    n = kept_rows.shape[1]
    return ForwardResult(x, (block,) + (n,) * (layers - 1), (block, block) + (n,) * (layers - 2), kept_rows,
                         keep_mask)


def check_focus_matches_stock(model: Decoder, x: torch.Tensor, kernels: ModuleType) -> None:
    """At kept fraction 1.0 the focus arm's output equals stock's; raises ``AssertionError`` otherwise."""
    block = model.shape.block_size
    candidates = block_candidates(x.shape[0], block, block, x.device)
    stock = stock_forward(model, x).hidden
    focus = focus_forward(model, x, block, kernels=kernels, candidates=candidates).hidden
    torch.testing.assert_close(focus, stock, msg=lambda m: f"focus at kept fraction 1.0 differs from stock: {m}")


def require_focus_equals_stock(model: Decoder, x: torch.Tensor, kernels: ModuleType) -> None:
    """``check_focus_matches_stock`` as a clean exit: a mismatch stops the run before any timing is reported."""
    try:
        check_focus_matches_stock(model, x, kernels)
    except AssertionError as error:
        raise SystemExit(f"bench.forward: FOCUS at kept fraction 1.0 differs from stock at batch {x.shape[0]}, no timings reported\n{error}") from None


def layer_bound(num_layers: int, kept_share: float) -> float:
    """Speedup if time were proportional to rows × layers: ``L / (2 + (L - 2)·kept_share)``."""
    return num_layers / (2 + (num_layers - 2) * kept_share)


class BenchSettings(NamedTuple):
    repeats: int
    warmup: int


def bench_config(model: Decoder, x: torch.Tensor, kept_fraction: float, kernels: ModuleType,
                 settings: BenchSettings) -> dict:
    """Time the three arms at one (batch size, kept fraction); the record of forward.json."""
    shape = model.shape
    eviction = eviction_for(kept_fraction, shape.block_size)
    candidates = block_candidates(x.shape[0], shape.block_size, eviction.target, x.device)
    focus = functools.partial(focus_forward, model, x, eviction.kept, kernels=kernels, candidates=candidates)
    oracle_rows = focus().kept_rows
    timing = dict(device=x.device, repeats=settings.repeats, warmup=settings.warmup)
    stock_ms = median_ms(lambda: stock_forward(model, x), **timing)
    focus_ms = median_ms(focus, **timing)
    oracle_ms = median_ms(lambda: focus_forward(model, x, eviction.kept, kept_rows=oracle_rows), **timing)
    bound = layer_bound(shape.num_layers, eviction.kept / shape.block_size)
    speedup = stock_ms / focus_ms
    return {
        "batch_size": x.shape[0],
        "kept_fraction": kept_fraction,
        "kept_rows": eviction.kept,
        "stock_ms": stock_ms,
        "focus_ms": focus_ms,
        "focus_oracle_ms": oracle_ms,
        "speedup": speedup,
        "bound": bound,
        "share_of_bound": speedup / bound,
        "overhead_ms": focus_ms - oracle_ms,
        "overhead_share": (focus_ms - oracle_ms) / focus_ms,
    }


GUARD_MARGIN = 0.05  # FOCUS must be at least this much faster than stock for eviction to count as worth it


def guard_recommendation(records: Sequence[dict], block_size: int, kept_fraction: float) -> dict:
    """The memory-bound guard's threshold read off the measurements at one kept fraction.

    `min_batch_tokens` is the processed-row count (batch × B) of the smallest measured batch from which FOCUS's
    forward is at least GUARD_MARGIN faster than stock's at every larger measured batch too; below it the forward
    is not compute-bound enough for eviction to pay (and evicted tokens still cost extra forwards). None when FOCUS
    never wins at the largest measured batch.
    """
    cells = sorted((r for r in records if r["kept_fraction"] == kept_fraction), key=lambda r: r["batch_size"])
    threshold = None
    for record in reversed(cells):
        if record["focus_ms"] > (1 - GUARD_MARGIN) * record["stock_ms"]:
            break
        threshold = record["batch_size"] * block_size
    return {"kept_fraction": kept_fraction, "margin": GUARD_MARGIN, "min_batch_tokens": threshold,
            "batch_sizes": [r["batch_size"] for r in cells]}


def kept_fraction_list(text: str) -> list[float]:
    """argparse type: comma-separated fractions in (0, 1]."""
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"kept fractions must lie in (0, 1], got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sglang_focus.bench.forward", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=["sdar-8b", "bundled", "tiny"], default="sdar-8b")
    parser.add_argument("--batch-sizes", type=int_list, default=[32, 64, 128, 256], help="requests per batch")
    parser.add_argument("--kept-fractions", type=kept_fraction_list, default=[1.0, 0.25, 0.1],
                        help="share of block rows kept from layer 1 on, each in (0, 1]")
    parser.add_argument("--context-len", type=int, default=None, help="history tokens per request (preset default)")
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guard-kept-fraction", type=float, default=0.25,
                        help="kept fraction at which to read off the recommended min_batch_tokens (must be one of "
                             "--kept-fractions; real block-diffusion models keep about 0.2-0.35)")
    add_cpu_threads_flag(parser)
    parser.add_argument("--out", type=Path, default=None, help="directory for forward.json")
    return parser


class Run(NamedTuple):
    preset: str
    shape: DecoderShape
    batch_sizes: list[int]
    kept_fractions: list[float]
    dtype: torch.dtype
    device: torch.device
    settings: BenchSettings
    seed: int
    cpu_threads: int | None
    out: Path | None
    guard_kept_fraction: float | None


def parse_args(argv: Sequence[str] | None) -> Run:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    if args.context_len is not None and args.context_len < 0:
        parser.error("--context-len must be >= 0")
    if args.preset == "bundled" and not BUNDLED_CONFIG.is_file():
        parser.error(f"--preset bundled: {BUNDLED_CONFIG} not found")
    shape = preset_shape(args.preset)
    if args.context_len is not None:
        shape = shape._replace(context_len=args.context_len)
    if shape.block_size > 128:
        parser.error(f"block size {shape.block_size}: the kernels accept at most 128 candidates per request")
    device = resolve_device(parser, args.device)
    dtype = DTYPES[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    guard_fraction = args.guard_kept_fraction if args.guard_kept_fraction in args.kept_fractions else None
    return Run(args.preset, shape, args.batch_sizes, args.kept_fractions, dtype, device,
               BenchSettings(args.repeats, args.warmup), args.seed, args.cpu_threads, args.out, guard_fraction)


def run_benchmark(run: Run, kernels: ModuleType) -> list[dict]:
    model = build_decoder(run.shape, max_batch=max(run.batch_sizes), dtype=run.dtype, device=run.device,
                          seed=run.seed)
    configs = [(bs, f) for bs in run.batch_sizes for f in run.kept_fractions]
    records, checked = [], set()
    with torch.inference_mode():
        for batch_size, kept_fraction in tqdm(configs, desc="forward", unit="config"):
            x = random_hidden(run.shape, batch_size, run.dtype, run.device, seed=run.seed + 1)
            if batch_size not in checked:
                require_focus_equals_stock(model, x, kernels)
                checked.add(batch_size)
            records.append(bench_config(model, x, kept_fraction, kernels, run.settings))
    return records


def format_report(report: dict) -> str:
    header = ["batch", "kept", "k rows", "stock ms", "focus ms", "oracle ms", "speedup", "bound", "share of bound",
              "overhead ms", "overhead share"]
    keys = ["batch_size", "kept_fraction", "kept_rows", "stock_ms", "focus_ms", "focus_oracle_ms", "speedup", "bound",
            "share_of_bound", "overhead_ms", "overhead_share"]
    rows = [[r[key] for key in keys] for r in report["records"]]
    title = (f"{report['hardware']}, torch {report['torch']}, triton {report['triton']}, {report['dtype']}, "
             f"preset {report['preset']} {report['shape']}")
    text = f"{title}\n\n{markdown_table(header, rows)}"
    guard = report.get("guard")
    if guard is not None:
        verdict = (f"min_batch_tokens: {guard['min_batch_tokens']}" if guard["min_batch_tokens"] is not None
                   else "FOCUS is never faster here: keep eviction off (a min_batch_tokens above every batch)")
        text += (f"\n\nmemory-bound guard at kept fraction {guard['kept_fraction']} "
                 f"(FOCUS >= {guard['margin']:.0%} faster from there on): {verdict}")
    return text


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the report that is also written to DIR/forward.json."""
    run = parse_args(argv)
    apply_cpu_threads(run.cpu_threads)
    records = run_benchmark(run, import_kernels())
    report = {**environment(run.device), "preset": run.preset, "shape": run.shape._asdict(),
              "dtype": str(run.dtype).removeprefix("torch."), "repeats": run.settings.repeats,
              "warmup": run.settings.warmup, "records": records}
    if run.guard_kept_fraction is not None:
        report["guard"] = guard_recommendation(records, run.shape.block_size, run.guard_kept_fraction)
    print(format_report(report))
    if run.out is not None:
        run.out.mkdir(parents=True, exist_ok=True)
        (run.out / "forward.json").write_text(json.dumps(report, indent=2) + "\n")
        save_plot(report, run.out / "forward.png")
    return report


def save_plot(report: dict, path: Path) -> None:
    """Speedup vs batch size per kept fraction, with each fraction's layer bound dotted (skipped without
    matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no forward.png", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for fraction in sorted({r["kept_fraction"] for r in report["records"]}, reverse=True):
        cells = sorted((r for r in report["records"] if r["kept_fraction"] == fraction), key=lambda r: r["batch_size"])
        line, = ax.plot([r["batch_size"] for r in cells], [r["speedup"] for r in cells], "o-",
                        label=f"kept {fraction:g}")
        ax.axhline(cells[0]["bound"], color=line.get_color(), linestyle=":", linewidth=1)
    batches = sorted({r["batch_size"] for r in report["records"]})
    ax.set(xscale="log", xlabel="batch size (requests of one block)", ylabel="FOCUS / stock forward speed",
           title=f"forward, preset {report['preset']}, {report['dtype']}, {report['hardware']}")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.axhline(1.0, color="gray", linewidth=0.8)
    ax.legend(title="dotted: layer bound")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
