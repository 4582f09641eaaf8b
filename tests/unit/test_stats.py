"""FOCUS stats: per-request totals and ratios, and the patch hooks that carry them to responses and metrics.

The hook functions are called directly on stand-in objects; their installation on SGLang is covered by
tests/patches/test_manifest.py and their effect on a real server by tests/e2e/test_focus_stats.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import msgspec
import pytest

from sglang_focus import stats
from sglang_focus.patches.dllm_mixin_scheduler import record_focus_stats
from sglang_focus.patches.managers_scheduler_components_output_streamer import (
    focus_stats_are_request_level,
    refresh_streamed_focus_stats,
)
from sglang_focus.patches.managers_tokenizer_manager import keep_latest_focus_stats
from sglang_focus.stats import FocusStats


def delta(processed, kept, masked, unmasked):
    return {"forwards": 1, "processed": processed, "kept": kept, "evicted": processed - kept, "masked": masked,
            "unmasked": unmasked}


def test_summary_ratios():
    totals = FocusStats(forwards=4, processed=40, kept=22, evicted=18, masked=30, unmasked=10)
    summary = totals.summary()
    assert summary["kept_ratio"] == pytest.approx(22 / 40)
    # 10 non-mask rows are always kept, so 12 of the 30 masked candidates were kept.
    assert summary["masked_kept_ratio"] == pytest.approx(12 / 30)
    assert summary["tokens_per_forward"] == pytest.approx(2.5)
    assert {k: summary[k] for k in stats.COUNT_FIELDS} == {f: getattr(totals, f) for f in stats.COUNT_FIELDS}
    assert "audit" not in summary, "a server that does not audit reports no audit counts"


def test_ratios_before_any_work_do_not_divide_by_zero():
    summary = stats.ZERO.summary()
    assert (summary["kept_ratio"], summary["masked_kept_ratio"], summary["tokens_per_forward"]) == (1.0, 1.0, 0.0)


def fake_scheduler(metrics=False, labels=None):
    collector = SimpleNamespace(labels=labels or {}) if metrics else None
    return SimpleNamespace(metrics_reporter=SimpleNamespace(current_scheduler_metrics_enabled=metrics,
                                                            metrics_collector=collector))


def fake_result(customized_info):
    return SimpleNamespace(logits_output=SimpleNamespace(customized_info=customized_info))


def fake_batch(n):
    return SimpleNamespace(reqs=[SimpleNamespace(customized_info=None) for _ in range(n)])


def test_hook_sums_each_requests_deltas_across_forwards():
    scheduler, batch = fake_scheduler(), fake_batch(2)
    assert record_focus_stats(scheduler, batch, fake_result({"focus_step": [delta(16, 4, 16, 1),
                                                                            delta(8, 8, 2, 2)]})) is None
    record_focus_stats(scheduler, batch, fake_result({"focus_step": [delta(15, 5, 15, 3), delta(6, 6, 0, 0)]}))
    first, second = (req.customized_info["focus_stats"] for req in batch.reqs)
    assert len(first) == 1 and len(second) == 1
    assert first[0] == FocusStats(forwards=2, processed=31, kept=9, evicted=22, masked=31, unmasked=4).summary()
    assert second[0]["processed"] == 14 and second[0]["evicted"] == 0 and second[0]["tokens_per_forward"] == 1.0


def test_hook_keeps_other_customized_info_keys():
    batch = fake_batch(1)
    batch.reqs[0].customized_info = {"other": [1, 2]}
    record_focus_stats(fake_scheduler(), batch, fake_result({"focus_step": [delta(4, 4, 4, 4)]}))
    assert batch.reqs[0].customized_info["other"] == [1, 2]


@pytest.mark.parametrize("result", [fake_result(None), fake_result({"other": [[1]]}),
                                    SimpleNamespace(logits_output=None)])
def test_hook_is_inert_for_stock_algorithm_results(result):
    batch = fake_batch(1)
    record_focus_stats(fake_scheduler(metrics=True), batch, result)
    assert batch.reqs[0].customized_info is None


def test_step_stats_misaligned_with_the_batch_is_an_error():
    with pytest.raises(ValueError, match="1 entries for a batch of 2"):
        record_focus_stats(fake_scheduler(), fake_batch(2), fake_result({"focus_step": [delta(4, 4, 4, 4)]}))


def test_non_integer_count_is_an_error():
    with pytest.raises(msgspec.ValidationError):
        record_focus_stats(fake_scheduler(), fake_batch(1), fake_result({"focus_step": [
            {**delta(4, 4, 4, 4), "kept": 2.5}]}))


def test_counters_count_the_batch_where_scheduler_metrics_are_on():
    from prometheus_client import REGISTRY

    labels = {"model_name": "tiny", "tp_rank": 0}

    def value(name):
        return REGISTRY.get_sample_value(name, {"model_name": "tiny", "tp_rank": "0"}) or 0.0

    names = ["sglang:focus_forwards_total", "sglang:focus_processed_tokens_total", "sglang:focus_kept_tokens_total",
             "sglang:focus_evicted_tokens_total", "sglang:focus_unmasked_tokens_total"]
    record_focus_stats(fake_scheduler(metrics=True, labels=labels), fake_batch(1),
                       fake_result({"focus_step": [delta(1, 1, 1, 1)]}))
    before = [value(n) for n in names]
    record_focus_stats(fake_scheduler(metrics=True, labels=labels), fake_batch(2),
                       fake_result({"focus_step": [delta(16, 4, 16, 1), delta(8, 8, 2, 2)]}))
    record_focus_stats(fake_scheduler(metrics=False), fake_batch(1), fake_result({"focus_step": [delta(9, 1, 9, 9)]}))
    assert [value(n) - b for n, b in zip(names, before)] == [2, 24, 12, 12, 3]


def test_focus_stats_is_a_request_level_key():
    def original(streamer, key):
        return key == "theirs"

    assert focus_stats_are_request_level(original, None, "focus_stats")
    assert focus_stats_are_request_level(original, None, "theirs")
    assert not focus_stats_are_request_level(original, None, "per_token")


def fake_accumulator(*reqs, customized_info=None):
    return SimpleNamespace(output_reqs=list(reqs), customized_info=customized_info or {})


def streamed_req(summary, stream=True):
    return SimpleNamespace(stream=stream, customized_info={"focus_stats": [summary]})


def test_every_stream_chunk_carries_the_latest_totals():
    plain, req = SimpleNamespace(stream=True, customized_info=None), streamed_req({"kept": 7})
    acc = fake_accumulator(plain, req)
    refresh_streamed_focus_stats(None, acc, req=req)
    assert acc.customized_info == {"focus_stats": [[], [{"kept": 7}]]}

    acc = fake_accumulator(req, customized_info={"focus_stats": [[]]})  # what SGLang leaves after chunk one
    refresh_streamed_focus_stats(None, acc, req=req)
    assert acc.customized_info["focus_stats"] == [[{"kept": 7}]]


@pytest.mark.parametrize("req, in_chunk", [
    (streamed_req({"kept": 7}, stream=False), True),  # non-streamed: SGLang sends the key at finish
    (streamed_req({"kept": 7}), False),  # not part of this chunk
    (SimpleNamespace(stream=True, customized_info=None), True),  # no FOCUS stats
])
def test_stream_refresh_leaves_other_requests_alone(req, in_chunk):
    other = SimpleNamespace(stream=True, customized_info=None)
    acc = fake_accumulator(other, req) if in_chunk else fake_accumulator(other)
    refresh_streamed_focus_stats(None, acc, req=req)
    assert acc.customized_info == {}


def test_tokenizer_shows_the_latest_summary_as_a_dict_and_keeps_it_out_of_token_slicing():
    received = [{"forwards": 1}, {"forwards": 3}]
    meta_info = {"focus_stats": received}
    state = SimpleNamespace(customized_info_accumulated={"focus_stats": received, "other": [1, 2]})
    keep_latest_focus_stats(None, None, meta_info, state, {}, 0, None)
    assert meta_info["focus_stats"] == {"forwards": 3}
    assert state.customized_info_accumulated == {"other": [1, 2]}


def test_tokenizer_leaves_focus_stats_out_of_a_chunk_that_brought_none():
    meta_info = {"focus_stats": [], "other": [1]}
    state = SimpleNamespace(customized_info_accumulated={"focus_stats": [], "other": [1]})
    keep_latest_focus_stats(None, None, meta_info, state, {}, 0, None)
    assert meta_info == {"other": [1]} and state.customized_info_accumulated == {"other": [1]}


def test_tokenizer_hook_is_inert_without_focus_stats():
    meta_info, state = {"other": [1]}, SimpleNamespace(customized_info_accumulated={"other": [1]})
    keep_latest_focus_stats(None, None, meta_info, state, {}, 0, None)
    assert meta_info == {"other": [1]} and state.customized_info_accumulated == {"other": [1]}


def test_arms_sum_the_focus_stats_dicts_of_replies_and_skip_replies_without():
    from sglang_focus.bench.arms import summed_stats

    def reply(**counts):
        return {"meta_info": {"focus_stats": FocusStats(**counts).summary()}}

    replies = [reply(forwards=2, processed=32, kept=20, evicted=12, masked=30, unmasked=9),
               reply(forwards=1, processed=16, kept=16, masked=16, unmasked=4), {"meta_info": {}}]
    assert summed_stats(replies) == {"forwards": 3, "processed": 48, "kept": 36, "evicted": 12, "masked": 46,
                                     "unmasked": 13}


def test_arm_ratios_of_summed_counters_and_none_when_nothing_was_counted():
    from sglang_focus.bench.arms import stat_ratios

    ratios = stat_ratios({"forwards": 4, "processed": 64, "kept": 40, "evicted": 24, "masked": 48, "unmasked": 12})
    assert ratios == {"tokens_per_forward": 3.0, "rows_per_forward": 16.0, "kept_ratio": 0.625,
                      "masked_kept_ratio": 0.5}
    empty = stat_ratios(dict.fromkeys(("forwards", "processed", "kept", "evicted", "masked", "unmasked"), 0))
    assert set(empty.values()) == {None}
