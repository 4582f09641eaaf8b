"""bench.chat_quality's scoring: where a response ends, the teacher's log-likelihood of it, and the comparisons."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, models

from sglang_focus.bench import chat_quality
from sglang_focus.bench.chat_quality import Response

END, EOT = 7, 8


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    vocab = {f"t{i}": i for i in range(7)} | {"<|im_end|>": END, "<|endoftext|>": EOT}
    return Tokenizer(models.WordLevel(vocab, unk_token="t0"))


@pytest.fixture(scope="module")
def teacher():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).float().eval()


def test_a_response_ends_at_its_first_end_marker_which_it_keeps(tokenizer):
    r = chat_quality.cut_response(tokenizer, [1, 2, END, 3, EOT], {END, EOT})
    assert r == Response(ids=(1, 2, END), text="t1 t2", finished=True)
    r = chat_quality.cut_response(tokenizer, [4, EOT, END], {END, EOT})
    assert r.ids == (4, EOT) and r.finished


def test_a_response_without_an_end_marker_is_unfinished_and_kept_whole(tokenizer):
    r = chat_quality.cut_response(tokenizer, [1, 2, 3], {END, EOT})
    assert r == Response(ids=(1, 2, 3), text="t1 t2 t3", finished=False)


def test_teacher_log_likelihood_is_the_chain_rule_over_the_response(teacher):
    """One forward over prompt + response equals scoring each token from a separate forward of its prefix."""
    prompt, response = [3, 1, 4, 1], [5, 9, 2, 6]
    (score,) = chat_quality.teacher_log_likelihoods(teacher, [prompt], [response])
    expected = 0.0
    with torch.inference_mode():
        for i, token in enumerate(response):
            logits = teacher(torch.tensor([prompt + response[:i]])).logits[0, -1]
            expected += float(torch.log_softmax(logits, -1)[token])
    assert score == pytest.approx(expected, rel=1e-5)
    assert score < 0


def test_an_empty_response_scores_zero_and_a_foreign_token_is_refused(teacher):
    assert chat_quality.teacher_log_likelihoods(teacher, [[1, 2]], [[]]) == [0.0]
    with pytest.raises(ValueError, match="outside the teacher's vocabulary"):
        chat_quality.teacher_log_likelihoods(teacher, [[1, 2]], [[3, 16]])


def test_quality_is_token_weighted_and_counts_finished_responses():
    responses = [Response((1, END), "a", True), Response((1, 2, 3, 4, 5, 6), "b", False)]
    fields = chat_quality.quality_fields([-2.0, -12.0], responses)
    assert fields["ll_per_token"] == pytest.approx(-14.0 / 8)
    assert fields["finished"] == 0.5 and fields["mean_tokens"] == 4 and fields["tokens"] == 8


def test_comparisons_against_stock():
    same, other = Response((1, END), "a", True), Response((2, END), "b", True)
    records = [{"arm": "stock", "ll_per_token": -2.0}, {"arm": "focus", "ll_per_token": -2.1},
               {"arm": "teacher", "ll_per_token": -1.0}]
    chat_quality.add_comparisons(records, {"stock": [same, same], "focus": [same, other],
                                           "teacher": [other, other]})
    stock, focus, teacher_row = records
    assert stock["ll_change_vs_stock"] == 0 and stock["identical_to_stock"] == 1
    assert math.isclose(focus["ll_change_vs_stock"], -0.05) and focus["identical_to_stock"] == 0.5
    assert math.isclose(teacher_row["ll_change_vs_stock"], 0.5) and teacher_row["identical_to_stock"] == 0
    table = chat_quality.format_table([{**r, "finished": 1.0, "mean_tokens": 2.0} for r in records])
    assert "-5.0%" in table and "+50.0%" in table


def test_comparisons_without_stock_are_none():
    records = [{"arm": "focus", "ll_per_token": -2.0}]
    chat_quality.add_comparisons(records, {"focus": [Response((1,), "a", False)]})
    assert records[0]["ll_change_vs_stock"] is None and records[0]["identical_to_stock"] is None
