"""Per-architecture access to the pieces of a decoder layer that the evicting forward runs separately.

Each adapter also provides the model subclass that SGLang loads when FOCUS is selected: it behaves exactly like
SGLang's own class unless the batch carries FOCUS eviction input.
"""

from __future__ import annotations

from typing import Protocol

import torch


class ArchAdapter(Protocol):
    def embed(self, model, input_ids: torch.Tensor) -> torch.Tensor: ...

    def layers(self, model) -> list: ...

    def final_norm(self, model): ...

    def attention(self, layer): ...

    def head_shape(self, attn) -> dict[str, int]: ...

    def project_qkv(self, attn, positions, hidden, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [n, H·d], k [n, H_kv·d] after q/k norm and RoPE, and v [n, H_kv·d]; writes no KV."""
        ...

    def attention_output(self, attn, context: torch.Tensor) -> torch.Tensor: ...

    def mlp(self, layer, hidden: torch.Tensor, batch) -> torch.Tensor: ...


def focus_model_classes() -> dict[str, type]:
    """Architecture name -> the FOCUS-capable subclass SGLang should load instead of its own."""
    from sglang_focus.adapters.llada2 import FocusLLaDA2MoeModelLM
    from sglang_focus.adapters.sdar import FocusSDARForCausalLM

    return {"SDARForCausalLM": FocusSDARForCausalLM, "LLaDA2MoeModelLM": FocusLLaDA2MoeModelLM}
