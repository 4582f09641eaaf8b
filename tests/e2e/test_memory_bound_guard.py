"""The memory-bound guard with its shipped default: small batches never evict, large ones do (spec §12.6)."""

from __future__ import annotations

import pytest

from conftest import THRESHOLD, start_server, write_yaml
from sglang_focus.config import FocusConfig
from sglang_focus.stats import COUNT_FIELDS
from prompts import PROMPTS

pytestmark = pytest.mark.e2e

BLOCK = 16  # tiny SDAR's block size
SAMPLING = {"max_new_tokens": 32, "ignore_eos": True}


@pytest.fixture(scope="module")
def guarded_server(request, tmp_path_factory, tiny_sdar):
    """FOCUS with the shipped guard: the YAML sets only the threshold both arms share."""
    cfg = write_yaml(tmp_path_factory.mktemp("guard_cfg") / "focus.yaml", {"threshold": THRESHOLD})
    server = start_server(tmp_path_factory, tiny_sdar, "sdar_focus_guarded", ["--focus", "--focus-config", cfg])
    request.addfinalizer(server.stop)
    return server


def summed_stats(server, texts: list[str]) -> dict:
    resp = server.generate({"text": texts, "sampling_params": SAMPLING})
    assert resp.status_code == 200, resp.text
    totals = dict.fromkeys(COUNT_FIELDS, 0)
    for item in resp.json():
        for key in COUNT_FIELDS:
            totals[key] += item["meta_info"]["focus_stats"][0][key]
    return totals


def test_the_default_threshold_is_a_batch_of_several_blocks():
    assert FocusConfig().min_batch_tokens == 128


def test_a_single_request_is_below_the_guard_and_never_evicts(guarded_server):
    stats = summed_stats(guarded_server, [PROMPTS[0]])
    assert BLOCK < FocusConfig().min_batch_tokens
    assert stats["forwards"] > 0 and stats["evicted"] == 0 and stats["kept"] == stats["processed"]


def test_a_batch_processing_enough_rows_evicts(guarded_server):
    batch = (PROMPTS * 16)[:16]  # 16 blocks of 16 rows in the first denoising step: 256 >= 128
    stats = summed_stats(guarded_server, batch)
    assert stats["evicted"] > 0 and stats["kept"] + stats["evicted"] == stats["processed"]
