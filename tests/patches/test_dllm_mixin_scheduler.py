"""patches/dllm_mixin_scheduler.keep_carried_budget: the state FOCUS hands back for a finished block survives
SGLang's block switch, and nothing else changes."""

from __future__ import annotations

from types import SimpleNamespace

from sglang_focus.patches.dllm_mixin_scheduler import keep_carried_budget
from sglang_focus.structs import FocusReqState


def fake_req(state, finished=False):
    return SimpleNamespace(dllm_algo_state=state, finished=lambda: finished)


def test_a_cleared_state_takes_the_carried_one():
    carried = FocusReqState(uncached=[True] * 4, earlier_unmasked=8, earlier_decoding_steps=2)
    mid_block = FocusReqState(uncached=[False, True, True, True], steps=1)
    reqs = [fake_req(None), fake_req(mid_block), fake_req(None, finished=True), fake_req(None)]
    result = SimpleNamespace(dllm_algo_state=[carried, mid_block, carried, None])
    assert keep_carried_budget(None, object(), SimpleNamespace(reqs=reqs), result) is None
    assert reqs[0].dllm_algo_state is carried, "a resolved block of an unfinished request carries the budget"
    assert reqs[1].dllm_algo_state is mid_block, "a request still in its block keeps SGLang's state"
    assert reqs[2].dllm_algo_state is None, "a finished request gets nothing"
    assert reqs[3].dllm_algo_state is None, "budget_reset: block leaves SGLang's fresh start"


def test_results_without_focus_states_are_untouched():
    reqs = [fake_req(None), fake_req(None)]
    keep_carried_budget(None, object(), SimpleNamespace(reqs=reqs), SimpleNamespace(dllm_algo_state=None))
    keep_carried_budget(None, object(), SimpleNamespace(reqs=reqs), SimpleNamespace(dllm_algo_state=[{"x": 1}, 3]))
    assert [r.dllm_algo_state for r in reqs] == [None, None]
