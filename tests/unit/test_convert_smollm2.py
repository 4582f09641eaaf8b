"""The SmolLM2 converter's pieces that need no model: llama.cpp's q/k row order undone, the LLaDA2-dense config,
and clear errors for a missing base package."""

from __future__ import annotations

import numpy as np
import pytest

from sglang_focus.training import convert_smollm2 as conv

SHAPE = conv.GgufShape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64,
                        rope_theta=100000.0, rms_norm_eps=1e-5, vocab=49152)
METADATA = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2}


def llama_cpp_permute(weight: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf order for Llama q/k rows (interleaves the two rotary halves of each head)."""
    rows, cols = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


@pytest.mark.parametrize("heads", [9, 3])
def test_unpermute_restores_hf_row_order(heads):
    hf = np.random.default_rng(0).standard_normal((heads * 64, 576)).astype(np.float32)
    gguf = llama_cpp_permute(hf, heads)
    assert not np.array_equal(gguf, hf)
    np.testing.assert_array_equal(conv.unpermute_rotary_rows(gguf, heads), hf)


def test_config_is_llada2_dense_without_qk_norm_and_declares_the_mask():
    cfg = conv.llada2_dense_config(SHAPE, METADATA)
    assert cfg["architectures"] == ["LLaDA2MoeModelLM"]
    assert cfg["first_k_dense_replace"] == cfg["num_hidden_layers"] == 30  # no layer routes
    assert isinstance(cfg["num_experts"], int)  # the config class rejects null
    assert cfg["use_qk_norm"] is False and cfg["use_bias"] is False and cfg["use_qkv_bias"] is False
    assert cfg["mask_token_id"] == 49152 and cfg["vocab_size"] == 49153 and cfg["block_size"] == 32
    assert cfg["tie_word_embeddings"] is True and cfg["partial_rotary_factor"] == 1.0


def test_missing_base_package_names_the_fix():
    with pytest.raises(conv.ConversionError, match="make setup"):
        conv.locate_gguf("sglang_focus_no_such_package")
