"""The memory-bound guard with its shipped default: small batches decode exactly like stock, large ones evict."""

from __future__ import annotations

import pytest

from sglang_focus.config import FocusConfig
from sglang_focus.stats import COUNT_FIELDS
from prompts import PROMPTS

pytestmark = pytest.mark.e2e

BLOCK = 16  # tiny SDAR's block size
SAMPLING = {"max_new_tokens": 32, "ignore_eos": True}


def summed_stats(server, texts: list[str]) -> dict:
    """Stats summed over one /generate call with every text (scheduled together, up to --max-running-requests)."""
    resp = server.generate({"text": texts, "sampling_params": SAMPLING})
    assert resp.status_code == 200, resp.text
    totals = dict.fromkeys(COUNT_FIELDS, 0)
    for item in resp.json():
        for key in COUNT_FIELDS:
            totals[key] += item["meta_info"]["focus_stats"][key]
    return totals


def test_the_default_threshold_is_a_batch_of_several_blocks():
    assert FocusConfig().min_batch_tokens == 128


def test_a_single_request_is_below_the_guard_and_decodes_like_stock(sdar_focus_guarded_server, sdar_stock_server):
    """One block of 16 rows < 128: every step runs the whole block with no scoring, as stock SGLang does, so the
    output is stock's token for token (the unmasking rule is the host's)."""
    assert BLOCK < FocusConfig().min_batch_tokens
    prompts = PROMPTS[:3]
    for prompt in prompts:
        focus = sdar_focus_guarded_server.generate({"text": prompt, "sampling_params": SAMPLING}).json()
        stock = sdar_stock_server.generate({"text": prompt, "sampling_params": SAMPLING}).json()
        assert focus["output_ids"] == stock["output_ids"]
        stats = focus["meta_info"]["focus_stats"]
        assert stats["evicted"] == 0 and stats["kept"] == stats["processed"] == BLOCK * stats["forwards"]


def test_a_batch_of_enough_block_tokens_evicts(sdar_focus_guarded_server):
    batch = (PROMPTS * 16)[:16]  # 16 blocks of 16 rows: 256 >= 128
    stats = summed_stats(sdar_focus_guarded_server, batch)
    assert stats["evicted"] > 0 and stats["kept"] + stats["evicted"] == stats["processed"]
