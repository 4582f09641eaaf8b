"""FOCUS configuration: parsed and validated once from the dLLM algorithm YAML, then frozen."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

import msgspec
import yaml

ALGORITHM_NAME = "Focus"
STOCK_ALGORITHM_NAME = "LowConfidence"
# Checkpoint architectures FOCUS can evict on (each has an adapter in sglang_focus/adapters).
SUPPORTED_ARCHITECTURES = ("SDARForCausalLM", "LLaDA2MoeModelLM")

# Keys SGLang itself reads from the same YAML (DllmConfig), plus ours (mask_id is read by patches/dllm_config.py).
HOST_KEYS = frozenset({"block_size", "mask_id"})
# When the budget counters S and N (spec §4.5) start again from zero: at every block (the spec), or once per request
# (a new block starts from the request's running average over its earlier blocks).
BudgetReset = Literal["block", "request"]
BUDGET_RESETS: tuple[str, ...] = get_args(BudgetReset)


class FocusConfigError(ValueError):
    """A FOCUS option is invalid; the message names the option and the problem."""


class FocusConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Server-wide FOCUS settings (spec §7). Per-request overrides are validated separately."""

    alpha: float = 1.5  # budget factor α ≥ 1; inf disables eviction
    threshold: float = 0.8  # confidence threshold τ of the unmasking rule, in (0, 1]
    delayed_cache: bool = True  # process only uncached block positions (spec §2)
    # Memory-bound guard (spec §12.6): a batch with fewer block tokens (batch size × B) than this runs its step as
    # stock SGLang does (every position, no scoring, no eviction); state updates still run. 0 = always FOCUS. The
    # default is where FOCUS's forward became >= 5 % faster than stock's at kept fraction 0.25 for the bundled
    # model's shape on a 2-core CPU (`python -m sglang_focus.bench.forward --preset bundled`, docs/benchmarks.md);
    # calibrate per model and GPU.
    min_batch_tokens: int = 128
    # "block" (spec §4.5): S and N restart at every block, so a block's first step keeps ceil(alpha) masked tokens;
    # "request": they run over the whole request, so a new block starts from the average of the earlier ones. The
    # default is "request": on the bundled model it answered 11 of 200 held-out problems more than "block" and none
    # fewer, with 9 % fewer forwards per request and no slower steps (docs/benchmarks.md, "budget_reset").
    budget_reset: BudgetReset = "request"
    # Eviction audit: every `audit_every`-th evicting step of the server (a step in which some request may evict)
    # runs without eviction, as the delayed-cache-only arm would, while FOCUS's keep set is still selected from its
    # delta; the decodable tokens it would have evicted are counted (stats.AuditStats). 0 = off.
    audit_every: int = 0
    block_size: int | None = None  # overrides the checkpoint's block size
    mask_id: int | None = None  # overrides the checkpoint's mask token id

    def to_yaml_dict(self) -> dict[str, Any]:
        return {k: v for k, v in msgspec.structs.asdict(self).items() if v is not None}


FIELD_TYPES = {"alpha": float, "threshold": float, "delayed_cache": bool, "min_batch_tokens": int,
               "budget_reset": str, "audit_every": int, "block_size": int, "mask_id": int}
# Options whose value is one of a fixed set of names.
FIELD_CHOICES = {"budget_reset": BUDGET_RESETS}


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> str:
    """`value` if it is one of `choices`; otherwise FocusConfigError naming `key` and the allowed values."""
    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        raise FocusConfigError(f"'{key}' must be {allowed}, got {value!r}")
    return value


def _coerce(key: str, value: Any) -> Any:
    expected = FIELD_TYPES[key]
    if expected is str:
        return check_choice(key, value, FIELD_CHOICES[key])
    if expected is bool:
        if isinstance(value, bool):
            return value
        raise FocusConfigError(f"'{key}' must be true or false, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise FocusConfigError(f"'{key}' must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise FocusConfigError(f"'{key}' must be a number, got {value!r}") from None
    if expected is int:
        if not number.is_integer():
            raise FocusConfigError(f"'{key}' must be an integer, got {value!r}")
        return int(number)
    return number


def _check_ranges(cfg: dict[str, Any]) -> None:
    alpha = cfg.get("alpha")
    if alpha is not None and (math.isnan(alpha) or alpha < 1):
        raise FocusConfigError(f"'alpha' must be >= 1 (inf disables eviction), got {alpha}")
    threshold = cfg.get("threshold")
    if threshold is not None and not 0 < threshold <= 1:
        raise FocusConfigError(f"'threshold' must be in (0, 1], got {threshold}")
    block_size = cfg.get("block_size")
    if block_size is not None and not 1 <= block_size <= 256:
        raise FocusConfigError(f"'block_size' must be in [1, 256], got {block_size}")
    min_batch_tokens = cfg.get("min_batch_tokens")
    if min_batch_tokens is not None and min_batch_tokens < 0:
        raise FocusConfigError(f"'min_batch_tokens' must be >= 0, got {min_batch_tokens}")
    audit_every = cfg.get("audit_every")
    if audit_every is not None and audit_every < 0:
        raise FocusConfigError(f"'audit_every' must be >= 0 (0 = off), got {audit_every}")
    mask_id = cfg.get("mask_id")
    if mask_id is not None and mask_id < 0:
        raise FocusConfigError(f"'mask_id' must be a token id >= 0, got {mask_id}")


def parse_focus_config(raw: Mapping[str, Any] | None) -> FocusConfig:
    """Validate a mapping (the YAML's contents) into a FocusConfig; unknown keys are errors."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(FIELD_TYPES))
    if unknown:
        raise FocusConfigError(f"unknown FOCUS option(s) {', '.join(map(repr, unknown))}; "
                               f"known: {', '.join(sorted(FIELD_TYPES))}")
    values = {key: _coerce(key, value) for key, value in raw.items()}
    _check_ranges(values)
    return FocusConfig(**values)


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    try:
        loaded = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FocusConfigError(f"config file {str(path)!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise FocusConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise FocusConfigError(f"config file {str(path)!r} must hold a YAML mapping")
    return loaded
