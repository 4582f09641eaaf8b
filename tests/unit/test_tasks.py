"""The synthetic task suites: seeded, disjoint splits, right answers, a checker that takes every valid answer."""

from __future__ import annotations

import itertools
import json
import random
import re

import jinja2
import pytest
from tokenizers import Tokenizer

from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import MODELS_DIR
from sglang_focus.training.tokenizer import CHAT_TEMPLATE, EOS_TOKEN, MASK_TOKEN

V1, V2, V3 = tasks.SUITES["tasks-v1"], tasks.SUITES["tasks-v2"], tasks.SUITES["tasks-v3"]
# the block size of the checkpoint each suite is for
BLOCKS = {"tasks-v1": 16, "tasks-v2": 32, "tasks-v3": 32, "tasks-all": 32}
SMOLLM2_BASE = MODELS_DIR / "smollm2-base"  # built by `make setup`
# tasks-v3 is fine-tuned from a tasks-v2 checkpoint and keeps its tokenizer
TOKENIZER_SUITE = {"tasks-v3": "tasks-v2"}


def suite_tokenizer(suite: str):
    """The tokenizer of the checkpoint trained on `suite`: built afresh for the from-scratch models, SmolLM2's own
    (with the appended mask token) for the conversion `make setup` builds."""
    if suite == "tasks-all":
        return Tokenizer.from_file(str(SMOLLM2_BASE / "tokenizer.json"))
    return tasks.build_task_tokenizer(tasks.SUITES[TOKENIZER_SUITE.get(suite, suite)])


@pytest.fixture(scope="module", params=list(tasks.SUITES))
def suite(request):
    return request.param


@pytest.fixture(scope="module")
def tokenizer(suite):
    return suite_tokenizer(suite)


def test_same_seed_gives_same_problems_and_other_seeds_differ(suite):
    families = tasks.SUITES[suite]
    assert tasks.generate("train", 200, seed=7, tasks=families) == tasks.generate("train", 200, seed=7, tasks=families)
    assert tasks.generate("heldout", 50, seed=7, tasks=families) == tasks.generate("heldout", 50, seed=7,
                                                                                  tasks=families)
    assert tasks.generate("train", 50, seed=7, tasks=families) != tasks.generate("train", 50, seed=8, tasks=families)


def test_train_and_heldout_never_share_a_problem(suite):
    train = tasks.generate("train", 4000, seed=0, tasks=tasks.SUITES[suite])
    heldout = tasks.generate("heldout", 1500, seed=0, tasks=tasks.SUITES[suite])
    assert {p.key for p in train}.isdisjoint(p.key for p in heldout)
    assert {p.prompt for p in train}.isdisjoint(p.prompt for p in heldout)
    assert all(tasks.split_of(p.key) == "train" for p in train)
    assert all(tasks.split_of(p.key) == "heldout" for p in heldout)


def test_heldout_is_about_ten_percent_of_the_problem_space():
    buckets = [tasks.split_of(f"probe:{i}") for i in range(5000)]
    assert 0.08 < buckets.count("heldout") / len(buckets) < 0.12


def test_streams_cycle_through_every_task_of_the_suite(suite):
    families = tasks.SUITES[suite]
    problems = tasks.generate("heldout", 2 * len(families), seed=3, tasks=families)
    assert [p.task for p in problems] == list(families) * 2


def test_the_default_suite_is_the_small_task_models(bundled_model):
    assert tasks.suite_of(bundled_model) == tasks.SUITES[tasks.DEFAULT_SUITE]
    assert tasks.generate("heldout", 10, seed=1) == tasks.generate("heldout", 10, seed=1,
                                                                   tasks=tasks.SUITES[tasks.DEFAULT_SUITE])


def test_a_checkpoint_config_names_its_suite(tmp_path):
    assert tasks.config_suite({}) == V1  # checkpoints from before suites existed
    assert tasks.config_suite({tasks.SUITE_CONFIG_KEY: "tasks-v2"}) == V2
    (tmp_path / "config.json").write_text(json.dumps({tasks.SUITE_CONFIG_KEY: "tasks-v9"}))
    with pytest.raises(ValueError, match="unknown task_suite 'tasks-v9'"):
        tasks.suite_of(tmp_path)


def _numbers(text: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", text)]


def test_v1_answers_are_right_for_their_prompts():
    for p in tasks.generate("train", 500, seed=1, tasks=V1):
        if p.task == "arith":
            expr = p.prompt.removeprefix("Compute ").removesuffix(" step by step.")
            assert p.answer.endswith(f"Answer: {eval(expr)}")  # left-to-right +/- equals Python's order
        elif p.task == "sort":
            assert _numbers(p.answer) == sorted(_numbers(p.prompt))
        elif p.task == "reverse":
            words = p.prompt.removeprefix("Reverse the list: ").rstrip(".").split(", ")
            assert p.answer == f"Reversed: {', '.join(words[::-1])}."
        elif p.task == "lookup":
            table = dict(e.split("=") for e in p.prompt.split(". Look up: ")[0].removeprefix("Table: ").split(", "))
            for pair in p.answer.rstrip(".").split(", "):
                key, value = pair.split("=")
                assert table[key] == value


def test_walk_answers_follow_every_move_and_stay_on_the_grid():
    steps = {"up": (0, 1), "down": (0, -1), "left": (-1, 0), "right": (1, 0)}
    for p in tasks.generate("train", 300, seed=1, tasks=["walk"]):
        x, y = _numbers(p.prompt)[:2]
        moves = p.prompt.split("Moves: ")[1].split(". ")[0].split(", ")
        trace = re.findall(r"(\w+) \((\d),(\d)\)", p.answer)
        assert [m for m, _, _ in trace] == moves
        for move, tx, ty in trace:
            x, y = x + steps[move][0], y + steps[move][1]
            assert (int(tx), int(ty)) == (x, y) and 0 <= x < tasks.GRID and 0 <= y < tasks.GRID
        assert p.answer.endswith(f"End: ({x},{y}).")


def test_chain_answers_add_digit_by_digit_from_the_previous_result():
    for p in tasks.generate("train", 300, seed=1, tasks=["chain"]):
        value, *digits = _numbers(p.prompt.split(", keeping")[0])
        for (a, d, c), digit in zip(re.findall(r"(\d)\+(\d)=(\d)", p.answer), digits, strict=True):
            assert (int(a), int(d), int(c)) == (value, digit, (value + digit) % 10)
            value = int(c)
        assert p.answer.endswith(f"Answer: {value}.")


def test_pick_accepts_every_order_of_each_colour_group_and_nothing_else():
    for p in tasks.generate("train", 200, seed=1, tasks=["pick"]):
        table, asked = p.params
        groups = [[item for colour, item in table if colour == c] for c in asked]
        assert all(2 <= len(g) <= 4 for g in groups)
        for first, second in itertools.product(*(itertools.permutations(g) for g in groups)):
            text = f"{asked[0].capitalize()}: {', '.join(first)}. {asked[1].capitalize()}: {', '.join(second)}."
            assert tasks.is_correct(p, text + EOS_TOKEN)
        wrong = f"{asked[0].capitalize()}: {', '.join(groups[1])}. {asked[1].capitalize()}: {', '.join(groups[0])}."
        assert not tasks.is_correct(p, wrong)  # groups swapped
        short = f"{asked[0].capitalize()}: {', '.join(groups[0][1:])}. {asked[1].capitalize()}: {', '.join(groups[1])}."
        assert not tasks.is_correct(p, short)  # an item left out


def test_story_accepts_every_sentence_order_and_no_mixed_facts():
    p = tasks.generate("heldout", 1, seed=4, tasks=["story"])[0]
    sentences = [f"{n} lives in {c} and works as a {j}." for n, c, j in p.params]
    assert len(p.params) == tasks.STORY_PEOPLE
    orders = list(itertools.permutations(sentences))
    assert len(tasks.valid_answers(p)) == len(orders) == 24
    assert all(tasks.is_correct(p, " ".join(order)) for order in orders)
    (n0, c0, j0), (n1, c1, j1) = p.params[:2]
    swapped = " ".join(sentences).replace(f"works as a {j0}.", "#").replace(f"works as a {j1}.", f"works as a {j0}.")
    assert not tasks.is_correct(p, swapped.replace("#", f"works as a {j1}."))
    assert not tasks.is_correct(p, " ".join(sentences[:3]))


def test_training_answers_are_valid_and_cover_the_orders():
    p = tasks.generate("train", 1, seed=2, tasks=["story"])[0]
    rng = random.Random(0)
    drawn = {tasks.training_answer(p, rng) for _ in range(400)}
    assert drawn == set(tasks.valid_answers(p))
    sequential = tasks.generate("train", 1, seed=2, tasks=["walk"])[0]
    assert tasks.training_answer(sequential, rng) == sequential.answer


def test_answers_span_at_least_two_blocks_or_end_a_block(suite, tokenizer):
    """Every answer fits the block grid of its checkpoint and decodes back to its text; the mask never appears."""
    block = BLOCKS[suite]
    for split in tasks.SPLITS:
        for p in tasks.generate(split, 500, seed=2, tasks=tasks.SUITES[suite]):
            prompt, answer = tasks.encode_problem(tokenizer, p)
            assert len(answer) > (16 if suite == "tasks-v1" else 12), (p.task, p.answer)
            assert len(prompt) + len(answer) <= 4 * block + 64, (p.task, p.answer)
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


def test_tokenizer_build_is_deterministic(suite, tokenizer):
    assert suite_tokenizer(suite).get_vocab() == tokenizer.get_vocab()


def test_v1_tokenizer_is_the_bundled_checkpoints(bundled_model):
    from tokenizers import Tokenizer

    shipped = Tokenizer.from_file(str(bundled_model / "tokenizer.json"))
    assert tasks.build_task_tokenizer(V1).get_vocab() == shipped.get_vocab()


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


def test_answer_budget_fits_every_valid_answer_in_whole_blocks(suite, tokenizer):
    """The benchmarks' max_new_tokens: no valid answer (any order) and its end marker is cut, and no block is spare."""
    problems = tasks.generate("heldout", 100, seed="budget", tasks=tasks.SUITES[suite])
    block = BLOCKS[suite]
    budget = tasks.answer_token_budget(tokenizer, problems, block)
    lengths = [len(tasks.encode_problem(tokenizer, p, answer)[1]) for p in problems for answer in some_answers(p)]
    assert budget % block == 0 and max(lengths) <= budget < max(lengths) + block


def some_answers(problem: tasks.Problem, n: int = 24) -> list[str]:
    """Up to `n` valid answers: listed ones, or for the free-choice families the canonical one and random draws."""
    if tasks.TASKS[problem.task].check is None:
        return tasks.valid_answers(problem)[:n]
    rng = random.Random(problem.key)
    return [problem.answer] + [tasks.training_answer(problem, rng) for _ in range(n - 1)]


@pytest.mark.parametrize("task", ["invent", "pack"])
def test_free_choice_training_answers_are_valid_varied_and_tokenize_the_same_length(task):
    """Any drawn answer passes the checker, drawn answers differ, and every one has the canonical token count
    under the tasks-v2 tokenizer the tasks-v3 checkpoint keeps (every content word is one token there)."""
    tokenizer = tasks.build_task_tokenizer(V2)
    for p in tasks.generate("train", 40, seed=5, tasks=[task]):
        answers = some_answers(p, 12)
        assert all(tasks.is_correct(p, a + EOS_TOKEN) for a in answers), p.prompt
        assert len(set(answers)) > 6
        lengths = {len(tokenizer.encode(a).ids) for a in answers}
        assert lengths == {len(tokenizer.encode(p.answer).ids)}
        assert all(tokenizer.decode(tokenizer.encode(a).ids) == a for a in answers)
    with pytest.raises(ValueError, match="checked by a parser"):
        tasks.valid_answers(p)


def test_invent_checker_rejects_repeats_unknown_words_and_other_names():
    p = tasks.make_problem("invent", ["Mia", "Leo", "Sam"])
    assert p.prompt == "Invent facts for Mia, Leo and Sam."
    good = ("Mia lives in Paris and works as a baker. Leo lives in Rome and works as a pilot. "
            "Sam lives in Oslo and works as a chef.")
    assert tasks.is_correct(p, good + "<|im_end|>")
    assert not tasks.is_correct(p, good.replace("Oslo", "Paris"))  # a city twice
    assert not tasks.is_correct(p, good.replace("chef", "pilot"))  # a job twice
    assert not tasks.is_correct(p, good.replace("Oslo", "London"))  # not a known city
    assert not tasks.is_correct(p, good.replace("Leo", "Bob"))  # a name not asked for
    leo, sam = good.split(". ")[1], good.split(". ")[2]
    assert not tasks.is_correct(p, f"{good.split('. ')[0]}. {sam} {leo}.")  # not in the prompt's order
    assert not tasks.is_correct(p, good.rsplit(" Sam", 1)[0])  # a person left out


def test_pack_checker_rejects_the_banned_colour_repeated_items_and_a_wrong_count():
    p = tasks.make_problem("pack", ["Mia", "Oslo", 3, "red"])
    assert p.prompt == "Pack 3 things for Mia in Oslo, no red."
    good = "Mia in Oslo packs a blue lamp, a blue rope and a green chair."
    assert tasks.is_correct(p, good) and tasks.is_correct(p, p.answer)
    assert not tasks.is_correct(p, good.replace("green", "red"))  # the banned colour
    assert not tasks.is_correct(p, good.replace("rope", "lamp"))  # an item twice
    assert not tasks.is_correct(p, good.replace("chair", "sofa"))  # not a known item
    assert not tasks.is_correct(p, good.replace("Oslo", "Rome"))  # not the prompt's city
    assert not tasks.is_correct(p, "Mia in Oslo packs a blue lamp and a green chair.")  # two, not three
