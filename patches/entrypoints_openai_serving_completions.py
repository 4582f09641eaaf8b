"""Patches for sglang.srt.entrypoints.openai.serving_completions (see MANIFEST)."""

from __future__ import annotations

from sglang_focus.request_params import constrained_output_error


def refuse_grammar_constrained_output(original, serving, request, *args, **kwargs):
    """AROUND `OpenAIServingCompletion._validate_request` (and the chat route's): SGLang's own checks, then, on a
    dLLM server, a refusal of what would need a grammar (a grammar `response_format`, a forced tool call), named
    as the client sent it.

    Returns the original's message if it has one; else `request_params.constrained_output_error` on a dLLM server
    (the serving layer answers a message with HTTP 400); else None. Mutates nothing.
    """
    error = original(serving, request, *args, **kwargs)
    if error is not None:
        return error
    return constrained_output_error(request, dllm_algorithm(serving))


def dllm_algorithm(serving) -> str | None:
    """The dLLM algorithm of the server an OpenAI serving object belongs to (None: not a dLLM server)."""
    server_args = getattr(serving.tokenizer_manager, "server_args", None)
    return getattr(server_args, "dllm_algorithm", None)
