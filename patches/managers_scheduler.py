"""Patches for sglang.srt.managers.scheduler (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.request_params import dllm_request_error


def reject_unsupported_dllm_requests(original, scheduler, req, *args, **kwargs):
    """AROUND `Scheduler.validate_dllm_request`: the algorithm's own verdict, then the checks every dLLM run needs.

    Returns the algorithm's error message if it has one; otherwise, on a dLLM server, `dllm_request_error(req)`
    (grammar constraints, `return_logprob`); None (the request is admitted) on servers without a dLLM algorithm.
    SGLang answers a message with HTTP 400 before the request is queued. Mutates nothing.
    """
    error = original(scheduler, req, *args, **kwargs)
    if error is not None or getattr(scheduler, "dllm_config", None) is None:
        return error
    return dllm_request_error(req)
