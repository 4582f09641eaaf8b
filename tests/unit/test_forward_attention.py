"""Attention of FOCUS's own row batches: the paged switch decided at launch is never touched per step, a ragged plan
is refused, and the layer-1 KV write goes where and how the backend's own write would."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.model_executor.forward_context import ForwardContext, forward_context

from sglang_focus.compat import FLASHINFER_PAGED_ENV
from sglang_focus.forward.attention import replan_attention
from sglang_focus.forward.model_forward import write_kv


class RecordingBackend:
    """A FlashInfer-shaped backend: plans ragged unless `use_paged`, records every attribute write after init."""

    def __init__(self, *, use_paged: bool, scales=None):
        self.use_paged = use_paged
        self.forward_metadata = None
        self.token_to_kv_pool = RecordingPool()
        if scales is not None:
            self._kv_write_scales = lambda layer: scales
        self.writes: list[str] = []

    def __setattr__(self, name, value):
        if "writes" in self.__dict__:
            self.writes.append(name)
        super().__setattr__(name, value)

    def init_forward_metadata(self, batch) -> None:
        self.forward_metadata = SimpleNamespace(use_ragged=not self.use_paged)


class RecordingPool:
    def __init__(self):
        self.calls = []

    def set_kv_buffer(self, layer, loc_info, k, v, k_scale=None, v_scale=None):
        self.calls.append(SimpleNamespace(loc=loc_info, k=k, v=v, k_scale=k_scale, v_scale=v_scale))


def test_planning_row_batches_never_touches_the_paged_switch():
    backend = RecordingBackend(use_paged=True)
    with forward_context(ForwardContext(attn_backend=backend)):
        for _ in range(3):
            replan_attention(SimpleNamespace())
    assert backend.use_paged is True
    assert set(backend.writes) == {"forward_metadata"}, "a FOCUS step changed the backend's configuration"


def test_a_ragged_plan_of_a_row_batch_is_refused():
    backend = RecordingBackend(use_paged=False)
    with forward_context(ForwardContext(attn_backend=backend)), pytest.raises(RuntimeError, match=FLASHINFER_PAGED_ENV):
        replan_attention(SimpleNamespace())
    assert backend.use_paged is False


def radix_attention():
    return SimpleNamespace(tp_k_head_num=2, tp_v_head_num=2, qk_head_dim=4, v_head_dim=4)


def rows_batch_stand_in():
    return SimpleNamespace(out_cache_loc=torch.tensor([7, 3, 9]), out_cache_loc_is_physical=True)


@pytest.mark.parametrize("scales", [(0.5, 0.25), None], ids=["flashinfer_fp8_scales", "unscaled_backend"])
def test_layer1_kv_write_uses_the_batch_write_loc_and_the_backend_scales(scales):
    backend = RecordingBackend(use_paged=True, scales=scales)
    k, v = torch.randn(3, 8), torch.randn(3, 8)
    with forward_context(ForwardContext(attn_backend=backend)):
        write_kv(radix_attention(), rows_batch_stand_in(), k, v)
    (call,) = backend.token_to_kv_pool.calls
    assert call.loc.loc.tolist() == [7, 3, 9] and call.loc.physical, "unified pools refuse unmarked write ids"
    assert (call.k_scale, call.v_scale) == (scales or (None, None))
    assert call.k.shape == (3, 2, 4) and torch.equal(call.v.reshape(3, 8), v)
