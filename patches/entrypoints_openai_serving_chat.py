"""Patches for sglang.srt.entrypoints.openai.serving_chat (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.patches.entrypoints_openai_serving_completions import dllm_algorithm
from sglang_focus.request_params import response_format_error


def refuse_grammar_response_formats(original, serving, request, *args, **kwargs):
    """AROUND `OpenAIServingChat._validate_request`: as the completions patch of the same name (SGLang's checks,
    then, on a dLLM server, a grammar `response_format` refused by its own name). Mutates nothing."""
    error = original(serving, request, *args, **kwargs)
    if error is not None:
        return error
    return response_format_error(request, dllm_algorithm(serving))
