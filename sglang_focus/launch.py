"""What a FOCUS server settles once, at launch (`Focus.configure_server_args`).

It refuses the configurations FOCUS's row batches cannot serve, with one line naming the setting, before any
SGLang process starts; turns CUDA graphs off (eviction changes the batch shape inside the forward); and selects
paged FlashInfer planning for every process of the server (`compat.select_paged_attention`). Stock launches never
come here.
"""

from __future__ import annotations

import json
from typing import Any, Callable, NamedTuple

from sglang_focus.compat import FLASHINFER_PAGED_ENV, paged_attention_switch, select_paged_attention
from sglang_focus.config import ALGORITHM_NAME, FocusConfigError

# KV cache dtypes whose writes FOCUS's layer-1 KV write reproduces (FP8 with the backend's own scales). The FP4
# recipes go through FlashInfer's dequantisation workspace, planned per batch, which FOCUS's row batches do not
# prepare; mxfp8 needs the FA4 backend.
SERVABLE_KV_CACHE_DTYPES = ("auto", "bf16", "bfloat16", "fp8_e4m3", "fp8_e5m2")
# Parallel widths that give a rank only some of a batch's requests, tokens or layers (pipeline, data, attention-DP,
# attention and decode context parallelism): FOCUS scores and evicts on every rank from the whole batch.
SPLITTING_PARALLEL_SIZES = ("pp_size", "dp_size", "attn_dp_size", "attn_cp_size", "dcp_size")
# Tensor-parallel options that scatter the rows entering attention over the attention-TP ranks.
SCATTERING_FLAGS = ("enable_attn_tp_input_scattered", "enable_layernorm_sp")
# The override that turns LLaDA2 block routing off (every token routed on its own), quoted in the refusal.
PER_TOKEN_ROUTING_OVERRIDE = json.dumps({"expert_capacity": None})


class FocusLaunchError(FocusConfigError):
    """A launch setting FOCUS cannot serve; the message names the setting and the way out."""


class ModelFacts(NamedTuple):
    """What the launch checks read from the model config SGLang builds (--json-model-override-args applied)."""

    name: str  # the model path, for messages
    expert_capacity: int | None  # set: LLaDA2 routes MoE experts per block of consecutive tokens
    kv_pool: str | None  # why the model's KV pool is not one plain full-attention pool, or None


def configure_focus_launch(server_args) -> None:
    """Refuse what FOCUS cannot serve (FocusLaunchError), disable CUDA graphs, select paged attention planning.

    Runs in the launching process while SGLang resolves the server arguments, before it starts any other process;
    only declares resolutions and exports SGLang's paged switch.
    """
    from sglang.srt.arg_groups.overrides import resolving_view

    cfg = resolving_view(server_args)
    refusal = first_refusal(cfg, model_facts(server_args, cfg), paged_switch=paged_attention_switch())
    if refusal is not None:
        raise FocusLaunchError(refusal)
    _disable_cuda_graphs(server_args, cfg)
    select_paged_attention()


def first_refusal(cfg: Any, model: ModelFacts, *, paged_switch: bool | None) -> str | None:
    """The first reason FOCUS cannot serve this launch, as one line; None when it can.

    `cfg`: SGLang's resolving view of the server arguments; `paged_switch`: SGLang's paged-planning environment
    switch (None when unset)."""
    if paged_switch is False:
        return (f"FOCUS plans FlashInfer attention paged, and {FLASHINFER_PAGED_ENV} turns that off in this "
                f"environment: unset it")
    for check in CHECKS:
        refusal = check(cfg, model)
        if refusal is not None:
            return refusal
    return None


def _fdfo(cfg, model: ModelFacts) -> str | None:
    return None if cfg.dllm_fdfo else "FOCUS runs in FDFO mode only (dllm_fdfo must stay on)"


def _parallelism(cfg, model: ModelFacts) -> str | None:
    """Tensor parallelism is served: every attention-TP rank holds all of a batch's rows and some of the heads, and
    FOCUS sums the importance over the ranks' heads so that they all keep the same rows (spec §12.3,
    `forward.tensor_parallel`). Every layout that splits a batch's rows or layers over ranks stays at 1."""
    for name in SPLITTING_PARALLEL_SIZES:
        value = getattr(cfg, name, 1) or 1
        if value > 1:
            return (f"FOCUS supports {name}=1 only (got {value}): tensor parallelism is the only parallel layout "
                    f"it serves")
    for name in SCATTERING_FLAGS:
        if getattr(cfg, name, False):
            return (f"FOCUS does not support --{name.replace('_', '-')}: it scatters a batch's rows over the "
                    f"attention-TP ranks, and FOCUS selects rows on every rank from all of them")
    return None


def _one_attention_backend(cfg, model: ModelFacts) -> str | None:
    """Different prefill and decode backends make SGLang wrap both in a hybrid backend, which FOCUS cannot plan
    paged as a whole."""
    prefill = cfg.prefill_attention_backend or cfg.attention_backend
    decode = cfg.decode_attention_backend or cfg.attention_backend
    if prefill == decode:
        return None
    return (f"FOCUS plans one attention backend for every batch, got prefill {prefill!r} and decode {decode!r} "
            f"(a hybrid backend): pass one --attention-backend for both")


def _two_batch_overlap(cfg, model: ModelFacts) -> str | None:
    if not getattr(cfg, "enable_two_batch_overlap", False):
        return None
    return ("FOCUS does not support --enable-two-batch-overlap: its attention backend splits every batch in two, "
            "and FOCUS plans attention for row batches of its own")


def _kv_cache_dtype(cfg, model: ModelFacts) -> str | None:
    dtype = cfg.kv_cache_dtype or "auto"
    if dtype in SERVABLE_KV_CACHE_DTYPES:
        return None
    return (f"FOCUS does not support --kv-cache-dtype {dtype}: its layer-1 KV write and re-planned attention "
            f"handle the model dtype and FP8 (fp8_e4m3, fp8_e5m2) KV caches only")


def _block_routing(cfg, model: ModelFacts) -> str | None:
    if model.expert_capacity is None:
        return None
    return (f"FOCUS cannot serve LLaDA2 block routing: {model.name} sets expert_capacity={model.expert_capacity}, "
            f"which routes MoE experts per run of block_size consecutive tokens, and FOCUS's row batches are not "
            f"whole blocks of one request; route every token on its own with "
            f"--json-model-override-args '{PER_TOKEN_ROUTING_OVERRIDE}'")


def _kv_pool(cfg, model: ModelFacts) -> str | None:
    if model.kv_pool is None:
        return None
    return (f"FOCUS does not support {model.kv_pool}, which {model.name} uses: its row batches are planned for "
            f"one full-attention KV pool")


CHECKS: tuple[Callable[[Any, ModelFacts], str | None], ...] = (
    _fdfo, _parallelism, _one_attention_backend, _two_batch_overlap, _kv_cache_dtype, _block_routing, _kv_pool)


def model_facts(server_args, cfg) -> ModelFacts:
    """Build SGLang's model config for the launch (as DllmConfig does) and read what the checks need."""
    from sglang.srt.configs.model_config import ModelConfig

    model_config = ModelConfig.from_server_args(server_args, model_path=cfg.model_path, model_revision=cfg.revision)
    return ModelFacts(name=repr(cfg.model_path),
                      expert_capacity=getattr(model_config.hf_config, "expert_capacity", None),
                      kv_pool=_kv_pool_kind(model_config))


def _kv_pool_kind(model_config) -> str | None:
    """Why SGLang would give the model a sliding-window or hybrid KV pool (FlashInfer then plans two wrappers or a
    second id space per batch), or None for one plain full-attention pool."""
    from sglang.srt.configs.hybrid_arch import mambaish_config

    if model_config.is_hybrid_swa:
        return "a hybrid sliding-window KV pool"
    if model_config.attention_chunk_size is not None:
        return f"sliding-window attention (attention_chunk_size={model_config.attention_chunk_size})"
    if mambaish_config(model_config) is not None:
        return "a hybrid KV pool (linear-attention or Mamba layers)"
    return None


def _disable_cuda_graphs(server_args, cfg) -> None:
    from sglang.srt.arg_groups.overrides import declare_resolution
    from sglang.srt.model_executor.cuda_graph_config import Backend, Phase, with_phase

    graphs = cfg.cuda_graph_config
    for phase in (Phase.PREFILL, Phase.DECODE):
        graphs = with_phase(graphs, phase, backend=Backend.DISABLED)
    declare_resolution(server_args, ALGORITHM_NAME, cuda_graph_config=graphs)
