"""Unmasking on kept rows follows SGLang's LowConfidence rule exactly, and never touches evicted positions."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.dllm.algorithm.low_confidence import LowConfidence
from sglang.srt.dllm.config import DllmConfig

from sglang_focus.patches.dllm_algorithm_low_confidence import step_without_mask_token
from sglang_focus.unmasking.low_confidence import unmask_kept_rows

MASK, BLOCK, VOCAB = 3, 8, 32


def random_block(gen: torch.Generator, bs: int, mask_fraction: float) -> torch.Tensor:
    ids = torch.randint(4, VOCAB, (bs, BLOCK), generator=gen)
    ids[torch.rand(bs, BLOCK, generator=gen) < mask_fraction] = MASK
    ids[0] = MASK  # one fresh block
    if bs > 2:
        ids[2] = 7  # one block with no mask left
    return ids


def stock_step(ids: torch.Tensor, logits: torch.Tensor, threshold: float) -> torch.Tensor:
    algorithm = LowConfidence(DllmConfig("LowConfidence", {"threshold": threshold}, BLOCK, MASK, 1))
    batch = SimpleNamespace(batch_size=ids.shape[0], input_ids=ids.reshape(-1).clone(), dllm_prompt_mask=None)
    step_without_mask_token(LowConfidence.step, algorithm, batch, logits.clone(), [None] * ids.shape[0])
    return batch.input_ids.view_as(ids)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold", [0.3, 0.8])
def test_all_rows_kept_equals_sglang_low_confidence(seed, threshold):
    gen = torch.Generator().manual_seed(seed)
    ids = random_block(gen, bs=4, mask_fraction=0.6)
    logits = torch.randn(4 * BLOCK, VOCAB, generator=gen) * 4
    logits[:, MASK] += 3  # the mask token is often the favourite: it must never be chosen
    ours = unmask_kept_rows(ids, ids == MASK, logits.clone(), torch.arange(4 * BLOCK), mask_id=MASK,
                            threshold=threshold)
    assert torch.equal(ours, stock_step(ids, logits, threshold))
    assert not ((ours == MASK) & (ids != MASK)).any()


@pytest.mark.parametrize("seed", range(6))
def test_evicted_masked_positions_never_change(seed):
    gen = torch.Generator().manual_seed(seed)
    ids = random_block(gen, bs=3, mask_fraction=0.7)
    kept = torch.sort(torch.randperm(3 * BLOCK, generator=gen)[: 3 * BLOCK // 2]).values
    logits = torch.randn(kept.numel(), VOCAB, generator=gen) * 6
    new = unmask_kept_rows(ids, ids == MASK, logits, kept, mask_id=MASK, threshold=0.5)
    evicted = torch.ones(3 * BLOCK, dtype=torch.bool)
    evicted[kept] = False
    assert torch.equal(new.view(-1)[evicted], ids.view(-1)[evicted])
    changed_per_block = ((new != ids).sum(dim=1) > 0).tolist()
    kept_masked = torch.zeros(3 * BLOCK, dtype=torch.bool)
    kept_masked[kept] = ids.view(-1)[kept] == MASK
    assert changed_per_block == kept_masked.view(3, BLOCK).any(dim=1).tolist(), "a block with a kept mask advances"


def test_literal_mask_tokens_of_the_prompt_are_never_decoded():
    ids = torch.tensor([[MASK, MASK, 9, MASK, MASK, MASK, MASK, MASK]])
    prompt = torch.tensor([[True, True, True, False, False, False, False, False]])
    logits = torch.full((BLOCK, VOCAB), -5.0)
    logits[:, 11] = 10.0  # every row is confident
    new = unmask_kept_rows(ids, (ids == MASK) & ~prompt, logits, torch.arange(BLOCK), mask_id=MASK, threshold=0.5)
    assert new[0, :3].tolist() == [MASK, MASK, 9]
    assert new[0, 3:].tolist() == [11] * 5
