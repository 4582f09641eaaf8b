"""The synthetic task suite: seeded, disjoint splits, answers spanning two blocks, a strict answer checker."""

from __future__ import annotations

import jinja2
import pytest

from sglang_focus.training import tasks
from sglang_focus.training.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, MASK_TOKEN

BLOCK = 16


@pytest.fixture(scope="module")
def tokenizer():
    return tasks.build_task_tokenizer()


def test_same_seed_gives_same_problems_and_other_seeds_differ():
    assert tasks.generate("train", 200, seed=7) == tasks.generate("train", 200, seed=7)
    assert tasks.generate("heldout", 50, seed=7) == tasks.generate("heldout", 50, seed=7)
    assert tasks.generate("train", 50, seed=7) != tasks.generate("train", 50, seed=8)


def test_train_and_heldout_never_share_a_problem():
    train = tasks.generate("train", 4000, seed=0)
    heldout = tasks.generate("heldout", 1500, seed=0)
    assert {p.key for p in train}.isdisjoint(p.key for p in heldout)
    assert {p.prompt for p in train}.isdisjoint(p.prompt for p in heldout)
    assert all(tasks.split_of(p.key) == "train" for p in train)
    assert all(tasks.split_of(p.key) == "heldout" for p in heldout)


def test_heldout_is_about_ten_percent_of_the_problem_space():
    buckets = [tasks.split_of(f"probe:{i}") for i in range(5000)]
    assert 0.08 < buckets.count("heldout") / len(buckets) < 0.12


def test_streams_cycle_through_every_task():
    problems = tasks.generate("heldout", 2 * len(tasks.TASKS), seed=3)
    assert [p.task for p in problems] == list(tasks.TASKS) * 2


def test_answers_are_right_for_their_prompts():
    for p in tasks.generate("train", 500, seed=1):
        if p.task == "arith":
            expr = p.prompt.removeprefix("Compute ").removesuffix(" step by step.")
            assert p.answer.endswith(f"Answer: {eval(expr)}")  # left-to-right +/- equals Python's order
        elif p.task == "sort":
            numbers = [int(x) for x in p.prompt.removeprefix("Sort ascending: ").rstrip(".").split()]
            assert p.answer == f"Sorted: {' '.join(map(str, sorted(numbers)))}."
        elif p.task == "reverse":
            words = p.prompt.removeprefix("Reverse the list: ").rstrip(".").split(", ")
            assert p.answer == f"Reversed: {', '.join(words[::-1])}."
        elif p.task == "lookup":
            table = dict(e.split("=") for e in p.prompt.split(". Look up: ")[0].removeprefix("Table: ").split(", "))
            for pair in p.answer.rstrip(".").split(", "):
                key, value = pair.split("=")
                assert table[key] == value


def test_answers_span_at_least_two_blocks(tokenizer):
    """More than B answer tokens (with <|im_end|>) touch two blocks wherever the prompt ends."""
    for split in tasks.SPLITS:
        for p in tasks.generate(split, 500, seed=2):
            prompt, answer = tasks.encode_problem(tokenizer, p)
            assert len(answer) > BLOCK, (p.task, p.answer)
            assert tokenizer.decode(answer, skip_special_tokens=False) == p.answer + EOS_TOKEN
            assert tokenizer.token_to_id(MASK_TOKEN) not in prompt + answer


def test_prompt_is_the_chat_template_user_turn(tokenizer):
    rendered = jinja2.Template(CHAT_TEMPLATE).render(messages=[{"role": "user", "content": "Sort ascending: 3 1."}],
                                                    add_generation_prompt=True)
    assert tasks.chat_prompt("Sort ascending: 3 1.") == rendered
    ids = tokenizer.encode(rendered).ids
    assert ids[0] == tokenizer.token_to_id("<|im_start|>") and tokenizer.token_to_id(EOS_TOKEN) in ids


def test_digits_are_one_token_each(tokenizer):
    assert tokenizer.encode("x=12345").tokens[-5:] == list("12345")


def test_tokenizer_build_is_deterministic(tokenizer):
    assert tasks.build_task_tokenizer().get_vocab() == tokenizer.get_vocab()


@pytest.fixture
def problem():
    return tasks.make_problem("sort", [42, 7, 19])


def test_checker_accepts_the_exact_answer(problem):
    assert problem.answer == "Sorted: 7 19 42."
    assert tasks.is_correct(problem, "Sorted: 7 19 42.")
    assert tasks.is_correct(problem, "Sorted: 7 19 42.<|im_end|>")


def test_checker_rejects_a_wrong_or_partial_answer(problem):
    assert not tasks.is_correct(problem, "Sorted: 7 42 19.<|im_end|>")
    assert not tasks.is_correct(problem, "Sorted: 7 19<|im_end|>")
    assert not tasks.is_correct(problem, "")


def test_checker_ignores_text_after_the_end_marker(problem):
    assert tasks.is_correct(problem, "Sorted: 7 19 42.<|im_end|> and then some noise")
    assert tasks.is_correct(problem, "Sorted: 7 19 42.<|endoftext|><|endoftext|>")
    assert not tasks.is_correct(problem, "Sorted: 7 19 42. and then some noise")


def test_checker_normalises_whitespace(problem):
    assert tasks.is_correct(problem, "  Sorted:\n7   19\t42. <|im_end|>")
    assert not tasks.is_correct(problem, "Sorted: 71 9 42.")
