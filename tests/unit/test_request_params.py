"""Per-request FOCUS parameters: validation at admission, and one α per request reaching the worker."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from sglang_focus.config import FocusConfigError
from sglang_focus.patches.sampling_sampling_batch_info import carry_focus_request_params
from sglang_focus.request_params import (
    FocusRequestParams,
    batch_request_params,
    parse_request_params,
    request_alphas,
    validate_request,
)


@pytest.mark.parametrize("custom_params", [None, {}, {"other": 1}, {"focus": None}, {"focus": {}},
                                           {"focus": {"enabled": True}}, {"thinking_budget": 3, "__req__": object()}])
def test_without_an_alpha_the_server_default_applies(custom_params):
    assert parse_request_params(custom_params) == FocusRequestParams(alpha=None)
    assert parse_request_params(custom_params).resolve_alpha(1.5) == 1.5


@pytest.mark.parametrize("focus, alpha", [
    ({"alpha": 1}, 1.0), ({"alpha": 2.5}, 2.5), ({"alpha": "inf"}, math.inf), ({"alpha": "Infinity"}, math.inf),
    ({"alpha": math.inf}, math.inf), ({"alpha": 3, "enabled": True}, 3.0),
    ({"enabled": False}, math.inf), ({"enabled": False, "alpha": "inf"}, math.inf),
])
def test_alpha_override(focus, alpha):
    assert parse_request_params({"focus": focus, "other": "ignored"}).resolve_alpha(1.5) == alpha


@pytest.mark.parametrize("focus, named", [
    ({"alpha": 0.5}, "'focus.alpha'"), ({"alpha": 0}, "'focus.alpha'"), ({"alpha": -2}, "'focus.alpha'"),
    ({"alpha": math.nan}, "'focus.alpha'"), ({"alpha": "big"}, "'focus.alpha'"), ({"alpha": "2"}, "'focus.alpha'"),
    ({"alpha": True}, "'focus.alpha'"), ({"alpha": None}, "'focus.alpha'"), ({"alpha": [2]}, "'focus.alpha'"),
    ({"enabled": "no"}, "'focus.enabled'"), ({"enabled": 0}, "'focus.enabled'"),
    ({"enabled": False, "alpha": 2}, "'focus.alpha'"),
    ({"alpha": 2, "budget": 3}, "'focus.budget'"),
    ({"budget_reset": "step"}, "'focus.budget_reset' must be 'block' or 'request', got 'step'"),
    ({"budget_reset": None}, "'focus.budget_reset'"),
])
def test_invalid_parameter_is_an_error_naming_the_key(focus, named):
    with pytest.raises(FocusConfigError, match=named):
        parse_request_params({"focus": focus})


@pytest.mark.parametrize("focus", ["yes", 2, True, ["alpha"]])
def test_focus_entry_must_be_an_object(focus):
    with pytest.raises(FocusConfigError, match="'focus'"):
        parse_request_params({"focus": focus})


@pytest.mark.parametrize("custom_params, kind", [("focus", "a string"), ([{"focus": {}}], "an array"),
                                                 (7, "a number"), (True, "a boolean")])
def test_custom_params_must_be_an_object(custom_params, kind):
    with pytest.raises(FocusConfigError, match=f"'custom_params' must be an object .*got {kind}"):
        parse_request_params(custom_params)


@pytest.mark.parametrize("focus, as_stock", [({}, False), ({"alpha": "inf"}, False), ({"enabled": True}, False),
                                             ({"enabled": False}, True), ({"enabled": False, "alpha": "inf"}, True)])
def test_only_enabled_false_decodes_as_stock(focus, as_stock):
    """alpha inf alone keeps the delayed cache; enabled: false opts out of FOCUS altogether."""
    assert parse_request_params({"focus": focus}).decodes_as_stock is as_stock


@pytest.mark.parametrize("focus, server, resolved", [
    ({}, "block", "block"), ({}, "request", "request"), ({"budget_reset": "request"}, "block", "request"),
    ({"budget_reset": "block", "alpha": 2}, "request", "block"),
])
def test_budget_reset_override(focus, server, resolved):
    assert parse_request_params({"focus": focus}).resolve_budget_reset(server) == resolved


def fake_req(custom_params):
    return SimpleNamespace(sampling_params=SimpleNamespace(custom_params=custom_params))


def test_validate_request_returns_the_error_message_for_http_400():
    assert validate_request(fake_req(None)) is None
    assert validate_request(fake_req({"focus": {"alpha": 2}})) is None
    error = validate_request(fake_req({"focus": {"alpha": 0.5}}))
    assert isinstance(error, str) and "'focus.alpha'" in error and "0.5" in error


def fake_forward_batch(custom_params, batch_size):
    return SimpleNamespace(batch_size=batch_size, sampling_info=SimpleNamespace(custom_params=custom_params))


def test_request_alphas_default_when_no_request_sends_parameters():
    assert request_alphas(fake_forward_batch(None, 3), 1.5) == [1.5, 1.5, 1.5]
    assert request_alphas(SimpleNamespace(batch_size=2, sampling_info=None), 2.0) == [2.0, 2.0]


def test_request_alphas_follow_batch_order_and_ignore_other_keys():
    params = [None, {"focus": {"alpha": 3}, "__req__": object()}, {"thinking_budget": 4},
              {"focus": {"enabled": False}}]
    assert request_alphas(fake_forward_batch(params, 4), 1.5) == [1.5, 3.0, 1.5, math.inf]


def test_batch_request_params_follow_batch_order():
    params = [None, {"focus": {"budget_reset": "request"}}, {"focus": {"alpha": 2}}]
    resolved = batch_request_params(fake_forward_batch(params, 3))
    assert [p.resolve_budget_reset("block") for p in resolved] == ["block", "request", "block"]
    assert [p.resolve_alpha(1.5) for p in resolved] == [1.5, 1.5, 2.0]
    assert batch_request_params(fake_forward_batch(None, 2)) == [FocusRequestParams()] * 2


def test_request_alphas_refuse_a_list_misaligned_with_the_batch():
    with pytest.raises(FocusConfigError, match="2 entries for a batch of 3"):
        request_alphas(fake_forward_batch([None, None], 3), 1.5)


def fake_schedule_batch(algorithm, params):
    return SimpleNamespace(dllm_config=SimpleNamespace(algorithm=algorithm), reqs=[fake_req(p) for p in params])


def test_focus_batch_carries_custom_params_to_the_worker():
    params = [None, {"focus": {"alpha": 4}}, {"other": 1}]
    sampling_info = SimpleNamespace(custom_params=None)  # what SGLang builds without a custom logit processor
    assert carry_focus_request_params(sampling_info, None, fake_schedule_batch("Focus", params), 100) is None
    assert sampling_info.custom_params == params
    forward_batch = SimpleNamespace(batch_size=3, sampling_info=sampling_info)
    assert request_alphas(forward_batch, 1.5) == [1.5, 4.0, 1.5]


@pytest.mark.parametrize("algorithm, params", [
    ("LowConfidence", [{"focus": {"alpha": 4}}]),  # stock algorithm: untouched
    ("Focus", [None, {"other": 1}]),  # nobody sends FOCUS parameters: stays None, worker uses defaults
])
def test_other_batches_keep_sglang_custom_params(algorithm, params):
    sampling_info = SimpleNamespace(custom_params=None)
    carry_focus_request_params(sampling_info, None, fake_schedule_batch(algorithm, params), 100)
    assert sampling_info.custom_params is None


def test_custom_logit_processor_list_is_kept():
    own = [{"focus": {"alpha": 2}, "__req__": "proxy"}]
    sampling_info = SimpleNamespace(custom_params=own)
    carry_focus_request_params(sampling_info, None, fake_schedule_batch("Focus", [{"focus": {"alpha": 2}}]), 100)
    assert sampling_info.custom_params is own


def test_grammar_constraints_and_logprobs_are_rejected_with_a_message():
    from sglang_focus.request_params import validate_request

    def req(return_logprob=False, **grammar):
        fields = {"custom_params": None, "regex": None, "json_schema": None, "ebnf": None, "structural_tag": None}
        return SimpleNamespace(sampling_params=SimpleNamespace(**{**fields, **grammar}), return_logprob=return_logprob)

    assert validate_request(req()) is None
    message = validate_request(req(regex="[0-9]+", json_schema='{"type": "object"}'))
    assert "'regex'" in message and "'json_schema'" in message and "does not support" in message
    assert "'return_logprob'" in validate_request(req(return_logprob=True))


def sampled_req(return_logprob=False, custom_logit_processor=None, **sampling):
    """A request as the scheduler sees it: SGLang's own SamplingParams, normalised as at admission."""
    from sglang.srt.sampling.sampling_params import SamplingParams

    return SimpleNamespace(sampling_params=SamplingParams(**sampling), return_logprob=return_logprob,
                           custom_logit_processor=custom_logit_processor)


@pytest.mark.parametrize("sampling", [{}, {"temperature": 0}, {"temperature": 0.0, "top_k": 1}, {"top_k": -1},
                                      {"temperature": 1.0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0},
                                      {"temperature": 0, "top_p": 0.5, "min_p": 0.2, "top_k": 5},
                                      {"sampling_seed": 7, "max_new_tokens": 8, "stop": ["."], "ignore_eos": True}])
def test_greedy_and_default_sampling_parameters_are_accepted(sampling):
    assert validate_request(sampled_req(**sampling)) is None


@pytest.mark.parametrize("sampling, named", [
    ({"temperature": 0.7}, "temperature=0.7"), ({"top_p": 0.9}, "top_p=0.9"), ({"top_k": 5}, "top_k=5"),
    ({"temperature": 0, "repetition_penalty": 1.2}, "repetition_penalty=1.2"),
    ({"min_p": 0.1}, "min_p=0.1"), ({"frequency_penalty": 0.5}, "frequency_penalty=0.5"),
    ({"presence_penalty": -1.0}, "presence_penalty=-1.0"), ({"repetition_penalty": 1.2}, "repetition_penalty=1.2"),
    ({"min_new_tokens": 4}, "min_new_tokens=4"), ({"logit_bias": {"5": 2.0}}, "logit_bias"),
])
def test_sampling_parameters_greedy_decoding_would_ignore_are_rejected_by_name(sampling, named):
    message = validate_request(sampled_req(**sampling))
    assert message is not None and named in message and "greedy" in message


def test_a_custom_logit_processor_is_rejected():
    assert "custom_logit_processor" in validate_request(sampled_req(custom_logit_processor="serialized"))


def test_every_dllm_algorithm_rejects_grammar_and_logprobs_but_not_sampling_parameters():
    from sglang_focus.request_params import dllm_request_error

    for fields in ({"regex": "[0-9]+"}, {"json_schema": '{"type": "object"}'}, {"ebnf": 'root ::= "a"'},
                   {"structural_tag": '{"structures": []}'}):
        (name,) = fields
        message = dllm_request_error(sampled_req(**fields))
        assert message is not None and f"'{name}'" in message and "does not support" in message
    assert "sgl.select()" in dllm_request_error(sampled_req(return_logprob=True))
    assert dllm_request_error(sampled_req(temperature=0.7)) is None, "stock dLLM keeps SGLang's sampling behaviour"
    assert dllm_request_error(sampled_req()) is None


@pytest.mark.parametrize("input_ids, vocab_size, outside", [
    ([0, 5, 831], 832, []), ([5, 832, 9, 832, -1], 832, [832, -1]), ([10**6], None, []), ([], 832, []),
    (list(range(900, 1000)), 832, [900, 901, 902, 903, 904]),
])
def test_out_of_vocabulary_prompt_ids_are_listed(input_ids, vocab_size, outside):
    from sglang_focus.request_params import out_of_vocabulary_ids

    assert out_of_vocabulary_ids(input_ids, vocab_size) == outside


def test_prompt_ids_outside_the_vocabulary_are_rejected_with_the_ids():
    from sglang_focus.request_params import dllm_request_error

    req = sampled_req()
    req.origin_input_ids = [5, 10**6, 7]
    message = dllm_request_error(req, vocab_size=832)
    assert "1000000" in message and "0..831" in message
    req.origin_input_ids = [5, 6, 7]
    assert dllm_request_error(req, vocab_size=832) is None
