"""The forward of a FOCUS-capable model class: SDAR and LLaDA2 differ in module names (their `DecoderAdapter`s),
not in how they switch to the evicting forward."""

from __future__ import annotations

import functools

import torch

from sglang_focus.forward.audit import audited_forward
from sglang_focus.forward.contract import FOCUS_AUDIT_KEY, FOCUS_INPUT_KEY, DecoderAdapter
from sglang_focus.forward.model_forward import focus_forward


class FocusForwardMixin:
    """Put first in the bases of a SGLang model class: evicts when the batch carries FOCUS eviction input, scores
    and selects around its own forward when it carries audit input (`forward.audit`), otherwise runs the SGLang
    model's own forward unchanged."""

    focus_adapter: DecoderAdapter

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, pp_proxy_tensors=None):
        states = forward_batch.model_specific_states
        if states and FOCUS_INPUT_KEY in states:
            return focus_forward(self.focus_adapter, self, input_ids, positions, forward_batch)
        if states and FOCUS_AUDIT_KEY in states:
            own_forward = functools.partial(super().forward, input_ids, positions, forward_batch, input_embeds,
                                            pp_proxy_tensors)
            return audited_forward(self.focus_adapter, self, forward_batch, own_forward)
        return super().forward(input_ids, positions, forward_batch, input_embeds, pp_proxy_tensors)
