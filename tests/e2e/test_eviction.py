"""FOCUS with eviction on the real server: it evicts, stays batch-invariant and deterministic, keeps radix reuse."""

from __future__ import annotations

import pytest

from prompts import PROMPTS  # tests/e2e/prompts.py

pytestmark = pytest.mark.e2e

SAMPLING = {"max_new_tokens": 64, "ignore_eos": True}


def run(server, prompts, sampling=SAMPLING, **extra):
    resp = server.generate({"text": prompts, "sampling_params": sampling, **extra})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body if isinstance(body, list) else [body]


def totals(items) -> dict[str, int]:
    keys = ("forwards", "processed", "kept", "evicted", "masked", "unmasked")
    return {k: sum(item["meta_info"]["focus_stats"][k] for item in items) for k in keys}


def test_requests_complete_and_report_evictions(focus_server):
    items = run(focus_server, PROMPTS)
    assert all(len(item["output_ids"]) == SAMPLING["max_new_tokens"] for item in items)
    stats = totals(items)
    assert stats["evicted"] > 0 and stats["kept"] + stats["evicted"] == stats["processed"]
    assert stats["unmasked"] >= SAMPLING["max_new_tokens"] * len(PROMPTS)


def test_tiny_sdar_keeps_at_most_60_percent_of_masked_block_tokens(sdar_focus_server):
    stats = totals(run(sdar_focus_server, PROMPTS))
    kept_masked = stats["kept"] - (stats["processed"] - stats["masked"])
    assert kept_masked / stats["masked"] <= 0.6, stats


def test_a_request_decodes_the_same_alone_and_in_a_batch_of_16(focus_server):
    batch = [item["output_ids"] for item in run(focus_server, PROMPTS * 2)]
    alone = [run(focus_server, prompt)[0]["output_ids"] for prompt in PROMPTS[:4]]
    assert batch[:4] == alone
    assert batch[:8] == batch[8:], "the same prompt twice in one batch decodes the same"


def test_repeated_runs_are_identical(focus_server):
    assert [i["output_ids"] for i in run(focus_server, PROMPTS)] == [i["output_ids"] for i in run(focus_server, PROMPTS)]


def test_prompts_sharing_a_prefix_reuse_the_radix_cache(focus_server):
    prefix = "Block diffusion models decode several tokens per step. " * 12
    first = run(focus_server, prefix + "What is next?")[0]
    second = run(focus_server, prefix + "Tell me more.")[0]
    block = 16
    shared = first["meta_info"]["prompt_tokens"] - 8
    assert second["meta_info"]["cached_tokens"] >= (shared // block - 1) * block > 0


def test_per_request_opt_out_disables_eviction(focus_server):
    items = run(focus_server, PROMPTS[:4], sampling={**SAMPLING, "custom_params": {"focus": {"enabled": False}}})
    assert totals(items)["evicted"] == 0


@pytest.mark.parametrize("extra", [{"sampling_params": {"regex": "[0-9]+", "max_new_tokens": 8}},
                                   {"return_logprob": True, "sampling_params": {"max_new_tokens": 8}}])
def test_unsupported_request_features_fail_fast_and_the_server_keeps_serving(sdar_focus_server, extra):
    resp = sdar_focus_server.generate({"text": "Hello", **extra}, timeout=60)
    assert resp.status_code == 400 and "does not support" in resp.text
    assert len(run(sdar_focus_server, "Hello")[0]["output_ids"]) == SAMPLING["max_new_tokens"]


def test_a_prompt_containing_the_mask_token_keeps_its_tokens_and_the_server_serving(focus_server):
    """SGLang marks literal prompt masks in dllm_prompt_mask; decoding them would corrupt the prompt's KV."""
    mask_id = 3
    resp = focus_server.generate({"input_ids": [mask_id, mask_id, mask_id, 5, 6],
                                  "sampling_params": {"max_new_tokens": 16, "ignore_eos": True}})
    assert resp.status_code == 200, resp.text
    assert mask_id not in resp.json()["output_ids"]
    assert len(run(focus_server, "Hello")[0]["output_ids"]) == SAMPLING["max_new_tokens"]
