"""FocusConfig parsing: validated once, frozen, unknown keys and bad values rejected with the option's name."""

from __future__ import annotations

import math

import msgspec
import pytest

from sglang_focus.config import FocusConfig, FocusConfigError, parse_focus_config


def test_defaults_follow_the_spec_but_carry_the_budget_over_the_request():
    cfg = parse_focus_config(None)
    assert cfg == FocusConfig(alpha=1.5, threshold=0.8, delayed_cache=True, budget_reset="request")


def test_the_eviction_audit_is_off_unless_asked_for():
    assert parse_focus_config(None).audit_every == 0
    assert parse_focus_config({"audit_every": "20"}).audit_every == 20


@pytest.mark.parametrize("value", ["block", "request"])
def test_budget_reset_takes_block_or_request(value):
    assert parse_focus_config({"budget_reset": value}).budget_reset == value


def test_config_is_frozen():
    with pytest.raises(AttributeError):
        parse_focus_config({}).alpha = 3.0


def test_values_are_coerced_to_their_types():
    cfg = parse_focus_config({"alpha": "2", "threshold": 0.9, "block_size": 32.0, "mask_id": 7})
    assert (cfg.alpha, cfg.block_size, cfg.mask_id) == (2.0, 32, 7)
    assert isinstance(cfg.block_size, int)


def test_infinite_alpha_disables_eviction_and_round_trips():
    cfg = parse_focus_config({"alpha": "inf"})
    assert math.isinf(cfg.alpha)
    assert msgspec.structs.asdict(cfg)["alpha"] == math.inf


@pytest.mark.parametrize("raw, message", [
    ({"alpha": 0.99}, "'alpha' must be >= 1"),
    ({"alpha": None}, "'alpha' must be a number"),
    ({"alpha": float("nan")}, "'alpha' must be >= 1"),
    ({"alpha": True}, "'alpha' must be a number"),
    ({"threshold": 0}, "'threshold' must be in (0, 1]"),
    ({"threshold": "abc"}, "'threshold' must be a number"),
    ({"block_size": 3.5}, "'block_size' must be an integer"),
    ({"block_size": 0}, "'block_size' must be in [1, 256]"),
    ({"mask_id": -1}, "'mask_id' must be a token id"),
    ({"delayed_cache": "yes"}, "'delayed_cache' must be true or false"),
    ({"min_batch_tokens": -1}, "'min_batch_tokens' must be >= 0"),
    ({"audit_every": -1}, "'audit_every' must be >= 0 (0 = off), got -1"),
    ({"audit_every": 2.5}, "'audit_every' must be an integer, got 2.5"),
    ({"audit_every": "often"}, "'audit_every' must be a number"),
    ({"audit_every": True}, "'audit_every' must be a number"),
    ({"budget_reset": "never"}, "'budget_reset' must be 'block' or 'request', got 'never'"),
    ({"budget_reset": "Block"}, "'budget_reset' must be 'block' or 'request', got 'Block'"),
    ({"budget_reset": None}, "'budget_reset' must be 'block' or 'request', got None"),
    ({"budget_reset": 1}, "'budget_reset' must be 'block' or 'request', got 1"),
    ({"alpah": 2}, "unknown FOCUS option(s) 'alpah'"),
])
def test_bad_values_name_the_option(raw, message):
    with pytest.raises(FocusConfigError, match=None) as info:
        parse_focus_config(raw)
    assert message in str(info.value)


def test_engine_kwargs_select_focus_with_a_validated_yaml():
    import yaml

    from sglang_focus import engine_kwargs

    kwargs = engine_kwargs(alpha=2, threshold=0.9)
    assert kwargs["dllm_algorithm"] == "Focus"
    with open(kwargs["dllm_algorithm_config"]) as f:
        assert yaml.safe_load(f) == {"alpha": 2.0, "threshold": 0.9, "delayed_cache": True, "min_batch_tokens": 128,
                                     "budget_reset": "request", "audit_every": 0}
    with open(engine_kwargs(audit_every=10)["dllm_algorithm_config"]) as f:
        assert yaml.safe_load(f)["audit_every"] == 10
    with open(engine_kwargs(budget_reset="block")["dllm_algorithm_config"]) as f:
        assert yaml.safe_load(f)["budget_reset"] == "block"
    with pytest.raises(FocusConfigError):
        engine_kwargs(alpha=0)
