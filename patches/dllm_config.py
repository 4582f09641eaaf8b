"""Patches for sglang.srt.dllm.config (see MANIFEST)."""

from __future__ import annotations

_CHECKPOINT_PARAMS: dict[tuple, tuple[int | None, int | None, int]] = {}


def _checkpoint_params(server_args, cfg) -> tuple[int | None, int | None, int]:
    """(mask_token_id, block_size, vocab_size) the checkpoint declares, --json-model-override-args applied.

    Cached per model: DllmConfig is rebuilt at every use site and the model config does not change.
    """
    key = (cfg.model_path, cfg.revision, cfg.json_model_override_args)
    if key not in _CHECKPOINT_PARAMS:
        from sglang.srt.configs.model_config import ModelConfig

        model_config = ModelConfig.from_server_args(
            server_args, model_path=cfg.model_path, model_revision=cfg.revision)
        hf_config = model_config.hf_config
        _CHECKPOINT_PARAMS[key] = (getattr(hf_config, "mask_token_id", None),
                                   getattr(hf_config, "block_size", None), model_config.vocab_size)
    return _CHECKPOINT_PARAMS[key]


def apply_checkpoint_dllm_params(dllm_config, server_args):
    """AFTER `DllmConfig.from_server_args`: mask id and block size from the YAML, then the checkpoint, then the table.

    Mutates and returns the freshly built DllmConfig; `None` (not a dLLM run) passes through.
    """
    if dllm_config is None:
        return None
    from sglang.srt.arg_groups.overrides import resolving_view

    cfg = resolving_view(server_args)
    mask_id, block_size, vocab_size = _checkpoint_params(server_args, cfg)
    yaml_config = dllm_config.algorithm_config
    dllm_config.mask_id = int(yaml_config.get("mask_id", mask_id if mask_id is not None else dllm_config.mask_id))
    if "block_size" not in yaml_config and block_size is not None:
        dllm_config.block_size = int(block_size)
    if not 0 <= dllm_config.mask_id < vocab_size:
        raise ValueError(
            f"dLLM mask token id {dllm_config.mask_id} is outside the vocabulary of {cfg.model_path!r} "
            f"(size {vocab_size}); declare `mask_token_id` in its config.json or `mask_id` in the dLLM YAML")
    return dllm_config
