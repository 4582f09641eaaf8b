"""Per-architecture access to the pieces of a decoder layer that the evicting forward runs separately.

Each adapter also provides the model subclass that SGLang loads when FOCUS is selected: it behaves exactly like
SGLang's own class unless the batch carries FOCUS eviction input.
"""

from __future__ import annotations


def focus_model_classes() -> dict[str, type]:
    """Architecture name -> the FOCUS-capable subclass SGLang should load instead of its own."""
    from sglang_focus.adapters.llada2 import FocusLLaDA2MoeModelLM
    from sglang_focus.adapters.sdar import FocusSDARForCausalLM

    return {"SDARForCausalLM": FocusSDARForCausalLM, "LLaDA2MoeModelLM": FocusLLaDA2MoeModelLM}
