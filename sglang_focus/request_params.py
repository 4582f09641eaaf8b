"""Per-request FOCUS parameters, carried in `sampling_params.custom_params["focus"]`.

A request may send `{"focus": {"alpha": <number >= 1 or "inf">, "enabled": <bool>, "budget_reset": "block" |
"request"}}`; every key is optional. `enabled: false` opts the request out of FOCUS: it decodes exactly as stock
SGLang would, in any batch (every block position processed every step, so no delayed cache; nothing scored or
evicted; α reads as inf). `alpha: "inf"` alone only turns eviction off: the delayed cache stays on.
`budget_reset` overrides the server's FocusConfig.budget_reset for that request. `custom_params` itself must be an
object (or absent/null); its other top-level keys belong to other features and are ignored. Requests are validated at admission (`validate_request`, scheduler
process); the worker reads the already-validated values per forward (`batch_request_params`, `request_alphas`).

Admission also rejects, with a message SGLang answers as HTTP 400, what block-diffusion decoding cannot honour:
- every dLLM algorithm, stock included (`dllm_request_error`, through patches/managers_scheduler.py): grammar
  constraints (`regex`, `json_schema`, `ebnf`, `structural_tag`) and `return_logprob` (so `sgl.select()`);
- FOCUS additionally (`validate_request`): sampling parameters set to anything but their neutral value
  (`ignored_sampling_params`). Decoding is greedy (argmax, confidence-threshold unmasking), so temperature,
  top-p/top-k/min-p, penalties, `min_new_tokens`, `logit_bias` and custom logit processors would be ignored.
  Greedy requests (temperature 0, top_k 1) and the defaults every client sends pass.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import msgspec

from sglang_focus.config import ALGORITHM_NAME, BUDGET_RESETS, BudgetReset, FocusConfigError, check_choice

GRAMMAR_FIELDS = ("regex", "json_schema", "ebnf", "structural_tag")
UNSUPPORTED_REASON = ("it decodes whole blocks in parallel, without per-token grammar masks or log-probabilities "
                      "(sgl.select() and other logprob APIs need them)")

# SGLang's "whole vocabulary" top_k (sglang.srt.sampling.sampling_params.TOP_K_ALL), what top_k -1 becomes.
TOP_K_ALL = 1 << 30

FOCUS_KEY = "focus"
REQUEST_KEYS = frozenset({"alpha", "enabled", "budget_reset"})
INF_SPELLINGS = frozenset({"inf", "+inf", "infinity"})


class FocusRequestParams(msgspec.Struct, frozen=True):
    """One request's FOCUS overrides, validated."""

    alpha: float | None = None  # α ≥ 1, inf = no eviction; None = the server's FocusConfig.alpha
    budget_reset: BudgetReset | None = None  # None = the server's FocusConfig.budget_reset
    enabled: bool = True  # False: decoded as stock (no delayed cache, no scoring, no eviction)

    @property
    def decodes_as_stock(self) -> bool:
        return not self.enabled

    def resolve_alpha(self, default_alpha: float) -> float:
        return default_alpha if self.alpha is None else self.alpha

    def resolve_budget_reset(self, default: BudgetReset) -> BudgetReset:
        return default if self.budget_reset is None else self.budget_reset


DEFAULT_PARAMS = FocusRequestParams()


def _parse_alpha(value: Any) -> float:
    if isinstance(value, str) and value.strip().lower() in INF_SPELLINGS:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FocusConfigError(f"'focus.alpha' must be a number >= 1 or \"inf\", got {value!r}")
    alpha = float(value)
    if math.isnan(alpha) or alpha < 1:
        raise FocusConfigError(f"'focus.alpha' must be >= 1 (\"inf\" disables eviction), got {value!r}")
    return alpha


def _parse_enabled(value: Any) -> bool:
    if not isinstance(value, bool):
        raise FocusConfigError(f"'focus.enabled' must be true or false, got {value!r}")
    return value


def parse_request_params(custom_params: Any) -> FocusRequestParams:
    """Validate a request's `custom_params` into FocusRequestParams.

    Only the "focus" entry is read; it may be absent or null (server defaults). Raises FocusConfigError, naming the
    key, for a `custom_params` that is not an object, an unknown key under "focus", a non-numeric or < 1 alpha, a non-boolean `enabled`, `enabled: false`
    together with a finite alpha, or a `budget_reset` other than "block" and "request".
    """
    if custom_params is None:
        return DEFAULT_PARAMS
    if not isinstance(custom_params, Mapping):
        raise FocusConfigError(f"'custom_params' must be an object (FOCUS reads its \"focus\" entry), got "
                               f"{_kind(custom_params)} {_preview(custom_params)}")
    focus = custom_params.get(FOCUS_KEY)
    if focus is None:
        return DEFAULT_PARAMS
    if not isinstance(focus, Mapping):
        raise FocusConfigError(f"'focus' must be an object with optional keys {_known_keys()}, got {focus!r}")
    unknown = sorted(set(focus) - REQUEST_KEYS)
    if unknown:
        raise FocusConfigError(f"unknown key(s) {', '.join(repr(f'focus.{k}') for k in unknown)}; "
                               f"known: {_known_keys()}")
    alpha = _parse_alpha(focus["alpha"]) if "alpha" in focus else None
    enabled = _parse_enabled(focus["enabled"]) if "enabled" in focus else True
    if not enabled:
        if alpha is not None and alpha != math.inf:
            raise FocusConfigError(f"'focus.enabled': false disables eviction and contradicts "
                                   f"'focus.alpha': {focus['alpha']!r}")
        alpha = math.inf
    budget_reset = (check_choice("focus.budget_reset", focus["budget_reset"], BUDGET_RESETS)
                    if "budget_reset" in focus else None)
    return FocusRequestParams(alpha=alpha, budget_reset=budget_reset, enabled=enabled)


def _kind(value: Any) -> str:
    """The JSON name of `value`'s type, as a client would call it."""
    for kind, types in (("a boolean", bool), ("a number", (int, float)), ("a string", str), ("an array", (list, tuple))):
        if isinstance(value, types):
            return kind
    return f"a {type(value).__name__}"


def _preview(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _known_keys() -> str:
    return ", ".join(repr(f"focus.{k}") for k in sorted(REQUEST_KEYS))


def validate_request(req) -> Optional[str]:
    """Admission check for `DllmAlgorithm.validate_request(cls, req)`: an error message, or None if valid.

    Reads `req.sampling_params` (grammar fields, sampling parameters, `custom_params`), `req.return_logprob` and
    `req.custom_logit_processor`. SGLang answers a returned message with HTTP 400 (the request is aborted before
    it is queued; the server keeps serving).
    """
    unsupported = unsupported_features(req)
    if unsupported:
        return f"FOCUS block-diffusion decoding does not support {', '.join(unsupported)}: {UNSUPPORTED_REASON}"
    ignored = ignored_sampling_params(req)
    if ignored:
        return (f"FOCUS block-diffusion decoding is greedy and cannot honour {', '.join(ignored)}: it unmasks the "
                "argmax token of each block position by confidence threshold. Send temperature 0 (or leave it "
                "unset) and leave the other sampling parameters at their defaults")
    try:
        parse_request_params(req.sampling_params.custom_params)
    except FocusConfigError as exc:
        return f"Invalid FOCUS request parameter: {exc}"
    return None


def dllm_request_error(req, vocab_size: Optional[int] = None) -> Optional[str]:
    """Admission check every dLLM algorithm needs (stock ones included): an error message, or None.

    Rejects what `unsupported_features` lists and, given `vocab_size`, prompt token ids outside the vocabulary
    (`req.origin_input_ids`). Without it stock SGLang accepts such requests and then cannot answer them, or crashes
    (see the MANIFEST entry of patches/managers_scheduler.py).
    """
    unsupported = unsupported_features(req)
    if unsupported:
        return f"Block-diffusion (dLLM) decoding does not support {', '.join(unsupported)}: {UNSUPPORTED_REASON}"
    outside = out_of_vocabulary_ids(getattr(req, "origin_input_ids", None) or (), vocab_size)
    if outside:
        return (f"Prompt token id(s) {', '.join(map(str, outside))} are outside the model's vocabulary "
                f"(ids 0..{vocab_size - 1})")
    return None


def constrained_output_error(request, algorithm: Optional[str]) -> Optional[str]:
    """For an OpenAI chat or completion request to a server running the dLLM `algorithm` (None: not a dLLM
    server, always None): an error naming what asks for grammar-constrained output as the client sent it, or None.

    Two things become grammar fields before admission, which would then refuse them under the field's name
    (`json_schema`, `structural_tag`), not the one the client used: a `response_format` of type json_object,
    json_schema or structural_tag, and a forced tool call (`tool_choice` "required" or a named function; "auto"
    and "none" constrain nothing)."""
    if algorithm is None:
        return None
    decoding = "FOCUS block-diffusion" if algorithm == ALGORITHM_NAME else "Block-diffusion (dLLM)"
    kind = getattr(getattr(request, "response_format", None), "type", None)
    if kind not in (None, "text"):
        return f"{decoding} decoding does not support 'response_format' of type {kind!r}: {UNSUPPORTED_REASON}"
    forced = _forced_tool_choice(getattr(request, "tool_choice", None))
    if forced is not None:
        return (f"{decoding} decoding does not support forced tool calls ('tool_choice' {forced}): "
                f"{UNSUPPORTED_REASON}; use 'tool_choice' 'auto'")
    return None


def _forced_tool_choice(choice) -> Optional[str]:
    """How a `tool_choice` that forces a call reads in a message ('required', or function 'name'), else None."""
    if choice == "required":
        return "'required'"
    if choice is None or isinstance(choice, str):
        return None
    name = getattr(getattr(choice, "function", None), "name", None)
    return f"function {name!r}" if name else repr(choice)


def validation_message(errors: Sequence[Mapping[str, Any]], limit: int = 500) -> str:
    """One line naming what is wrong with a request body, from FastAPI's validation `errors`: the field (dotted,
    without the leading "body") and the problem, or where the body stops being JSON. Never echoes file paths,
    code locations or the input."""
    parts = [_validation_part(error) for error in errors] or ["invalid request"]
    text = "Invalid request: " + "; ".join(parts)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _validation_part(error: Mapping[str, Any]) -> str:
    loc = [str(p) for p in (error.get("loc") or ()) if p != "body"]
    msg = str(error.get("msg") or "invalid value").strip()
    if error.get("type") == "json_invalid":
        where = f" at character {loc[0]}" if loc else ""
        detail = (error.get("ctx") or {}).get("error")
        hint = "; NaN and Infinity are not JSON numbers" if "unexpected character" in str(detail) else ""
        return f"the body is not valid JSON{where}" + (f" ({detail})" if detail else "") + hint
    return f"'{'.'.join(loc)}': {msg}" if loc else msg


def out_of_vocabulary_ids(input_ids: Sequence[int], vocab_size: Optional[int], limit: int = 5) -> list[int]:
    """Up to `limit` distinct ids of `input_ids` outside [0, vocab_size), in order; none if vocab_size is None."""
    if vocab_size is None or not input_ids or (min(input_ids) >= 0 and max(input_ids) < vocab_size):
        return []
    outside: list[int] = []
    for token in input_ids:
        if not 0 <= token < vocab_size and token not in outside:
            outside.append(token)
            if len(outside) == limit:
                break
    return outside


def unsupported_features(req) -> list[str]:
    """Request features no dLLM decoding can honour; rejected at admission instead of being ignored (or hanging)."""
    features = [f"'{name}'" for name in GRAMMAR_FIELDS if getattr(req.sampling_params, name, None)]
    if getattr(req, "return_logprob", False):
        features.append("'return_logprob'")
    return features


# Sampling parameters greedy block decoding never reads, each with the values that leave decoding unchanged.
# SGLang normalises a request before the scheduler sees it: temperature 0 becomes (temperature 1.0, top_k 1) and
# top_k -1 becomes TOP_K_ALL, so both greedy spellings and the defaults pass. Penalties, min_new_tokens and
# logit_bias change even greedy autoregressive decoding; top_p and min_p only matter when sampling (top_k != 1).
NEUTRAL_SAMPLING: tuple[tuple[str, tuple], ...] = (
    ("temperature", (1.0,)),
    ("top_k", (1, TOP_K_ALL, -1)),
    ("frequency_penalty", (0.0,)),
    ("presence_penalty", (0.0,)),
    ("repetition_penalty", (1.0,)),
    ("min_new_tokens", (0,)),
)
NEUTRAL_WHEN_SAMPLING: tuple[tuple[str, tuple], ...] = (("top_p", (1.0,)), ("min_p", (0.0,)))


def ignored_sampling_params(req) -> list[str]:
    """`name=value` for each sampling parameter of `req` set to a value greedy block decoding would ignore.

    Reads `req.sampling_params` (missing fields count as neutral), plus `logit_bias` and the request's
    `custom_logit_processor`. Temperature 1.0 passes: it is SGLang's default and what greedy requests become.
    top_p and min_p are checked only for sampling requests: a greedy request (top_k 1) never reads them.
    """
    params = req.sampling_params
    checked = NEUTRAL_SAMPLING if getattr(params, "top_k", TOP_K_ALL) == 1 else NEUTRAL_SAMPLING + NEUTRAL_WHEN_SAMPLING
    ignored = [f"{name}={getattr(params, name)!r}" for name, neutral in checked
               if getattr(params, name, neutral[0]) not in neutral]
    if getattr(params, "logit_bias", None):
        ignored.append("logit_bias")
    if getattr(req, "custom_logit_processor", None):
        ignored.append("custom_logit_processor")
    return ignored


def batch_request_params(forward_batch) -> list[FocusRequestParams]:
    """Each request's FOCUS parameters in `forward_batch`, in batch order (worker side).

    Reads `forward_batch.sampling_info.custom_params`, a list aligned with the batch, or None when no request of the
    batch sent parameters (then every request gets DEFAULT_PARAMS, i.e. the server's settings). The list is filled
    for FOCUS batches by patches/sampling_sampling_batch_info.py: stock SGLang fills it only when a custom logit
    processor is in use. Raises FocusConfigError if the list is misaligned with the batch or holds an invalid entry
    (both are bugs: entries were validated at admission).
    """
    sampling_info = forward_batch.sampling_info
    custom_params = sampling_info.custom_params if sampling_info is not None else None
    batch_size = forward_batch.batch_size
    if custom_params is None:
        return [DEFAULT_PARAMS] * batch_size
    if len(custom_params) != batch_size:
        raise FocusConfigError(f"custom_params has {len(custom_params)} entries for a batch of {batch_size}")
    return [parse_request_params(params) for params in custom_params]


def request_alphas(forward_batch, default_alpha: float) -> list[float]:
    """α for each request of `forward_batch`, in batch order (see `batch_request_params`)."""
    return [params.resolve_alpha(default_alpha) for params in batch_request_params(forward_batch)]


def sends_focus_params(reqs: Sequence) -> bool:
    """Whether any request carries a "focus" entry in `sampling_params.custom_params`."""
    return any(isinstance(p := r.sampling_params.custom_params, Mapping) and FOCUS_KEY in p for r in reqs)


def is_focus_batch(batch) -> bool:
    """Whether a ScheduleBatch is decoded by the FOCUS algorithm."""
    dllm_config = getattr(batch, "dllm_config", None)
    return dllm_config is not None and dllm_config.algorithm == ALGORITHM_NAME
