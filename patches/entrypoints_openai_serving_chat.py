"""Patches for sglang.srt.entrypoints.openai.serving_chat (see MANIFEST).

`OpenAIServingChat._validate_request` gets the same hook as the completions route: SGLang's checks, then, on a
dLLM server, a grammar `response_format` or a forced tool call refused by its own name.
"""

from __future__ import annotations

from sglang_focus.patches.entrypoints_openai_serving_completions import refuse_grammar_constrained_output

__all__ = ["refuse_grammar_constrained_output"]
