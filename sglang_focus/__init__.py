"""FOCUS decoding for block-diffusion LLMs, as a plugin for SGLang (`--focus`)."""

from __future__ import annotations

__version__ = "0.1.0"


def engine_kwargs(**focus_options) -> dict:
    """Keyword arguments that select FOCUS in `sgl.Engine(...)`, e.g. `sgl.Engine(model_path=m, **engine_kwargs(alpha=2))`.

    Options are validated like the YAML (alpha, threshold, delayed_cache, min_batch_tokens, budget_reset,
    audit_every, block_size, mask_id) and written to a YAML file that lives until the interpreter exits.
    """
    from sglang_focus.config import ALGORITHM_NAME, parse_focus_config
    from sglang_focus.patches.server_args import _write_merged_yaml

    config = parse_focus_config(focus_options)
    return {"dllm_algorithm": ALGORITHM_NAME, "dllm_algorithm_config": _write_merged_yaml(config.to_yaml_dict())}
