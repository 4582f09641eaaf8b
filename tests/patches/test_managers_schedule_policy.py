"""patches/managers_schedule_policy.py: a staged dLLM request always extends by exactly one block (or waits).

SGLang's own `PrefillAdder._get_dllm_remain_tokens` runs unhooked here (no plugin is loaded in the test process) on
a stand-in adder holding the attributes it reads, so each case shows what stock SGLang returns and what the hook
makes of it. The load that triggered the crash is in tests/e2e/test_hardening.py and examples/load_test.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_focus.patches.managers_schedule_policy import keep_dllm_blocks_whole

BLOCK = 16


def adder(rem_dllm_tokens: int, rem_total_tokens: int, separate_context: bool = False):
    config = SimpleNamespace(requires_separate_context_encoding=separate_context)
    return SimpleNamespace(dllm_config=config, dllm_block_size=BLOCK, rem_dllm_tokens=rem_dllm_tokens,
                           rem_total_tokens=rem_total_tokens, cur_rem_tokens=10**6, page_size=BLOCK,
                           is_hybrid_swa=False)


def stock_budget(fake_adder) -> int:
    from sglang.srt.managers.schedule_policy import PrefillAdder

    decode_req = SimpleNamespace(is_dllm_prefill=lambda: False)
    return PrefillAdder._get_dllm_remain_tokens(fake_adder, decode_req)


@pytest.mark.parametrize("rem_dllm_tokens, rem_total_tokens, stock, fixed", [
    (1024, 5000, BLOCK, BLOCK),  # no KV pressure: one block either way
    (1024, 0, 1024, BLOCK),  # KV estimate exhausted: stock hands out the whole row budget
    (1024, -300, 1024, BLOCK),
    (1024, 8, 8, BLOCK),  # a KV remainder below one block: stock cuts the block short
    (0, 5000, 0, 0),  # no row left: the request waits either way
])
def test_the_budget_is_one_block_or_nothing(rem_dllm_tokens, rem_total_tokens, stock, fixed):
    fake = adder(rem_dllm_tokens, rem_total_tokens)
    assert stock_budget(fake) == stock
    assert keep_dllm_blocks_whole(stock, fake) == fixed


def test_algorithms_with_a_separate_context_pass_keep_the_original_budget():
    fake = adder(1024, 0, separate_context=True)
    assert keep_dllm_blocks_whole(200, fake) == 200
