"""The checkpoints shipped in the repository's `models/` folder, and the one every tool uses by default.

Imports nothing but the standard library (the benchmarks run from an uninstalled checkout without SGLang).
"""

from __future__ import annotations

import json
from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# The SmolLM2-135M-Instruct checkpoints, build products of `make setup` (never committed): the autoregressive base
# in LLaDA2 layout, and the block-diffusion conversion (the base with the committed adapter merged).
SMOLLM2_BASE = MODELS_DIR / "smollm2-base"
SMOLLM2_DLLM = MODELS_DIR / "smollm2-dllm"
# The embedded default: what `make demo`, bench.throughput, bench.accuracy, bench.chat_quality,
# analysis.decodability and examples/load_test.py serve or decode unless given --model-path, and whose shape
# bench.forward's "bundled" preset times. `models/sdar-tasks`, the small from-scratch model, stays for fast tests.
EMBEDDED_DEFAULT = SMOLLM2_DLLM


def block_size_of(model_dir: Path) -> int:
    """The denoising block size the checkpoint in `model_dir` was trained with (`block_size` in config.json)."""
    return int(json.loads((Path(model_dir) / "config.json").read_text())["block_size"])


def load_for_decoding(model_dir: Path):
    """(model, tokenizers.Tokenizer) of a bundled checkpoint for the plain-PyTorch tools (decoder, analyses): the
    from-scratch SDAR models as `train.SdarLM`, the SmolLM2 conversion (LLaDA2 layout) as `llama_dllm.LlamaDllm`
    with its weights as served (no adapter on top). Both expose `cfg`, `hidden(ids, visible, positions, qk_sink)` and
    `logits(hidden)`."""
    architecture = json.loads((Path(model_dir) / "config.json").read_text())["architectures"][0]
    if architecture == "LLaDA2MoeModelLM":
        from tokenizers import Tokenizer

        from sglang_focus.training.llama_dllm import LlamaDllm

        return LlamaDllm.from_checkpoint(Path(model_dir), rank=0), Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    from sglang_focus.training.train import load_checkpoint

    return load_checkpoint(model_dir)
