"""The chat data set's prompts: distinct, evenly mixed, stable under a larger draw, and a fixed held-out split."""

from __future__ import annotations

import collections
import json
import re

from sglang_focus.training import chat_data

DATA = chat_data.DATA_FILE


def template_of(prompt: str) -> str:
    """The one template that makes `prompt` (slots match any text)."""
    matches = [t for t, slots in chat_data.TEMPLATES
               if re.fullmatch(re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)), prompt)]
    assert len(matches) == 1, (prompt, matches)
    return matches[0]


def test_prompts_are_distinct_capped_per_template_and_a_prefix_of_a_larger_draw():
    prompts = chat_data.draw_prompts(1000, seed=0)
    assert len(prompts) == len(set(prompts)) > 600
    per_template = collections.Counter(template_of(p) for p in prompts)
    assert len(per_template) == len(chat_data.TEMPLATES)
    assert max(per_template.values()) <= chat_data.PER_TEMPLATE
    assert chat_data.draw_prompts(200, seed=0) == prompts[:200]
    assert chat_data.draw_prompts(200, seed=1) != prompts[:200]


def test_split_is_a_fixed_hash_of_the_prompt():
    prompts = chat_data.draw_prompts(1000, seed=0)
    heldout = [p for p in prompts if chat_data.split_of(p) == "heldout"]
    assert 0.05 < len(heldout) / len(prompts) < 0.15
    assert all(chat_data.split_of(p) == "heldout" for p in heldout)


def test_committed_data_set_matches_its_generator():
    """Every record of the shipped file is a drawn prompt with the split its text hashes to, an answer that ended
    in time (no end marker left in the text), in the generator's order."""
    records = [json.loads(line) for line in DATA.read_text().splitlines()]
    prompts = chat_data.draw_prompts(1000, seed=0)
    order = {p: i for i, p in enumerate(prompts)}
    assert len(records) > 300
    assert all(r["prompt"] in order and r["split"] == chat_data.split_of(r["prompt"]) for r in records)
    assert [order[r["prompt"]] for r in records] == sorted(order[r["prompt"]] for r in records)
    assert all(r["response"].strip() and "<|im_end|>" not in r["response"] for r in records)
    assert {r["split"] for r in records} == {"train", "heldout"}
