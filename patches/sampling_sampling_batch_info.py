"""Patches for sglang.srt.sampling.sampling_batch_info (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.request_params import is_focus_batch, sends_focus_params


def carry_focus_request_params(sampling_info, cls, batch, vocab_size, *args, **kwargs):
    """AFTER `SamplingBatchInfo.from_schedule_batch`: FOCUS batches carry every request's custom_params.

    SGLang builds `custom_params` (one entry per request, in batch order) only for batches with a custom logit
    processor; the FOCUS worker reads per-request α from it (`request_params.request_alphas`). Mutates the freshly
    built SamplingBatchInfo when the batch is decoded by FOCUS and some request sends "focus" parameters; returns
    None (SGLang's result is kept).
    """
    if sampling_info.custom_params is None and is_focus_batch(batch) and sends_focus_params(batch.reqs):
        sampling_info.custom_params = [req.sampling_params.custom_params for req in batch.reqs]
