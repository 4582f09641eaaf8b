"""FOCUS on a real server: stats in meta_info and /metrics, per-request alpha, bad parameters answered with HTTP 400."""

from __future__ import annotations

import json
import re

import pytest
import requests

from sglang_focus.stats import COUNT_FIELDS

pytestmark = pytest.mark.e2e

PROMPT = "Count from one to ten: 1 2 3"
SAMPLING = {"max_new_tokens": 40, "ignore_eos": True}
SUMMARY_KEYS = {*COUNT_FIELDS, "kept_ratio", "masked_kept_ratio", "tokens_per_forward"}
COUNTERS = ("forwards", "processed_tokens", "kept_tokens", "evicted_tokens", "unmasked_tokens")


def generate(server, text, focus=None, **sampling):
    params = {**SAMPLING, **sampling}
    if focus is not None:
        params["custom_params"] = {"focus": focus}
    resp = server.generate({"text": text, "sampling_params": params})
    assert resp.status_code == 200, resp.text
    return resp.json()


def focus_stats(item) -> dict:
    stats = item["meta_info"]["focus_stats"]
    assert isinstance(stats, dict), "focus_stats is the request's summary, a plain dict"
    return stats


def check_consistent(stats, completion_tokens):
    assert set(stats) == SUMMARY_KEYS
    assert stats["forwards"] > 0 and stats["processed"] > 0
    assert stats["evicted"] == stats["processed"] - stats["kept"]
    assert 0 <= stats["processed"] - stats["masked"] <= stats["kept"], "non-mask rows are always kept"
    assert stats["unmasked"] >= completion_tokens, "tokens past max_new_tokens are decoded with their block"
    assert stats["kept_ratio"] == pytest.approx(stats["kept"] / stats["processed"])
    assert stats["tokens_per_forward"] == pytest.approx(stats["unmasked"] / stats["forwards"])


def test_meta_info_carries_focus_stats_with_evictions(sdar_focus_metrics_server):
    item = generate(sdar_focus_metrics_server, PROMPT)
    stats = focus_stats(item)
    check_consistent(stats, item["meta_info"]["completion_tokens"])
    assert stats["evicted"] > 0, "at the default alpha a 16-token block evicts masked rows"
    assert stats["masked_kept_ratio"] < 1.0


def test_each_request_of_a_batch_has_its_own_stats(sdar_focus_metrics_server):
    prompts = ["Hello there", "The quick brown fox jumps over the lazy dog", PROMPT]
    items = generate(sdar_focus_metrics_server, prompts)
    for item in items:
        check_consistent(focus_stats(item), item["meta_info"]["completion_tokens"])


def stream_chunks(server, payload) -> list[dict]:
    chunks = []
    with requests.post(f"{server.base_url}/generate", json={**payload, "stream": True}, stream=True,
                       timeout=300) as resp:
        assert resp.status_code == 200, resp.text
        for line in resp.iter_lines():
            if line.startswith(b"data:") and line != b"data: [DONE]":
                chunks.append(json.loads(line[5:]))
    return chunks


@pytest.mark.parametrize("server_name", ["sdar_focus_metrics_server", "sdar_stock_server",
                                         "sdar_focus_incremental_server"])
def test_stream_chunks_carry_running_totals_up_to_the_final_ones(request, server_name):
    chunks = stream_chunks(request.getfixturevalue(server_name), {"text": PROMPT, "sampling_params": SAMPLING})
    assert len(chunks) >= 2
    forwards = [focus_stats(chunk)["forwards"] for chunk in chunks]
    assert forwards == sorted(forwards) and forwards[-1] > forwards[0], "totals are not frozen after chunk one"
    check_consistent(focus_stats(chunks[-1]), chunks[-1]["meta_info"]["completion_tokens"])


@pytest.mark.parametrize("focus", [{"enabled": False}, {"alpha": "inf"}])
def test_request_can_switch_eviction_off(sdar_focus_metrics_server, focus):
    stats = focus_stats(generate(sdar_focus_metrics_server, PROMPT, focus=focus))
    assert stats["processed"] > 0 and stats["evicted"] == 0 and stats["kept"] == stats["processed"]


def test_alpha_is_per_request_within_one_batch(sdar_focus_metrics_server):
    resp = sdar_focus_metrics_server.generate({"text": [PROMPT, PROMPT], "sampling_params": [
        {**SAMPLING, "custom_params": {"focus": {"enabled": False}}}, SAMPLING]})
    assert resp.status_code == 200, resp.text
    off, default = (focus_stats(item) for item in resp.json())
    assert off["evicted"] == 0 and default["evicted"] > 0


def scrape(server) -> dict[str, float]:
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    values = {}
    for name in COUNTERS:
        samples = re.findall(rf"^sglang:focus_{name}_total(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.MULTILINE)
        values[name] = sum(float(v) for v in samples)
    return values


def test_metrics_count_focus_work(sdar_focus_metrics_server):
    before = scrape(sdar_focus_metrics_server)
    stats = focus_stats(generate(sdar_focus_metrics_server, PROMPT))
    after = scrape(sdar_focus_metrics_server)
    increase = {name: after[name] - before[name] for name in COUNTERS}
    assert increase == {"forwards": stats["forwards"], "processed_tokens": stats["processed"],
                        "kept_tokens": stats["kept"], "evicted_tokens": stats["evicted"],
                        "unmasked_tokens": stats["unmasked"]}
    assert after["evicted_tokens"] > 0


@pytest.mark.parametrize("focus, named", [
    ({"alpha": 0.5}, "focus.alpha"), ({"alpha": "big"}, "focus.alpha"), ({"enabled": "no"}, "focus.enabled"),
    ({"budget": 2}, "focus.budget"), ("on", "'focus' must be an object"),
])
def test_bad_parameters_get_http_400_and_the_server_keeps_serving(sdar_focus_metrics_server, focus, named):
    resp = sdar_focus_metrics_server.generate({"text": PROMPT, "sampling_params": {
        **SAMPLING, "custom_params": {"focus": focus}}})
    assert resp.status_code == 400, resp.text
    assert named in resp.text
    generate(sdar_focus_metrics_server, "Hello there", max_new_tokens=8)


def test_stock_algorithm_reports_the_same_counters_without_eviction(sdar_stock_server):
    item = generate(sdar_stock_server, PROMPT, focus={"alpha": 2})  # custom_params are ignored by stock
    stats = focus_stats(item)
    check_consistent(stats, item["meta_info"]["completion_tokens"])
    assert stats["evicted"] == 0 and stats["kept"] == stats["processed"] == 16 * stats["forwards"]
