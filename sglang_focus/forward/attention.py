"""Attention metadata and KV writes for a batch FOCUS built itself (processing rows, kept rows).

FOCUS's rows are a scattered subset of their blocks, so every key they attend must come from the paged KV cache:
FlashInfer's other plan (ragged k/v of the batch's own rows merged with the paged prefix) would miss the cached
rows that are not in the batch. A FOCUS server selects paged planning once, at launch (`sglang_focus.launch`);
nothing here changes the backend, it only checks the plan it made.
"""

from __future__ import annotations

from sglang.srt.model_executor.forward_batch_info import ForwardBatch
from sglang.srt.model_executor.forward_context import get_attn_backend

from sglang_focus.compat import FLASHINFER_PAGED_ENV


def replan_attention(batch: ForwardBatch) -> None:
    """Plan the current backend for `batch` (torch_native plans nothing; FlashInfer plans its paged wrapper)."""
    backend = get_attn_backend()
    backend.init_forward_metadata(batch)
    check_paged_plan(backend)


def check_paged_plan(backend) -> None:
    """Raise if `backend`'s latest plan attends the batch's own rows as ragged k/v (FlashInfer started without
    SGLang's paged switch, i.e. not through a FOCUS launch). Reads the plan only."""
    if getattr(getattr(backend, "forward_metadata", None), "use_ragged", False):
        raise RuntimeError(f"FlashInfer planned a FOCUS row batch as ragged attention; FOCUS servers must start "
                           f"with {FLASHINFER_PAGED_ENV}=1 (set at launch by --focus / --dllm-algorithm Focus)")


def kv_write_scales(backend, layer) -> tuple:
    """(k_scale, v_scale) that `backend`'s own KV writes pass for `layer`: FlashInfer's (the layer's FP8 scales, or
    none where the KV quantisation keeps a global scale); none for backends that write unscaled (torch_native)."""
    own = getattr(backend, "_kv_write_scales", None)
    return own(layer) if own is not None else (None, None)
