"""A seeded synthetic task suite with exact-match answers, for training and scoring the bundled checkpoint.

Five task families, each mixing easy tokens (fixed template words, copies from the prompt) with hard ones (sums,
orderings, looked-up values), and each answer long enough to span at least two blocks of 16 tokens:

* `arith`: three-step left-to-right addition/subtraction chains with worked steps ("23+8=31, 31-5=26. Answer: 26").
* `sort`: sort 5-7 distinct two-digit numbers ascending.
* `reverse`: reverse a comma-separated list of 8-12 words.
* `lookup`: read 4 values out of a key=value table in the prompt.
* `profile`: a templated paragraph filling slots from the prompt, plus one computed slot (age next year).

A problem is fully determined by its task and parameters; their canonical form (`Problem.key`) is hashed into the
"train" or "heldout" split (`split_of`), so the two splits are disjoint by construction whatever the seeds. Prompts
are the user turn of the tokenizer's chat template; answers are the assistant turn and end with `<|im_end|>`.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import msgspec
from tokenizers import Tokenizer, pre_tokenizers

from sglang_focus.training.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, train_tokenizer

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10  # share of the problem space whose hash puts it in "heldout"
END_MARKERS = (EOS_TOKEN, PAD_TOKEN)  # a completion's answer stops at the first of these
TASK_VOCAB = 1024  # BPE stops merging near 800 on this corpus; the model pads its vocabulary to 64
TOKENIZER_CORPUS_SIZE = 4000
_NO_DIGITS = str.maketrans("", "", "0123456789")

NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Mia", "Noah", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tina", "Uma", "Victor", "Wendy", "Yuri")
CITIES = ("Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Warsaw",
          "Athens", "Zurich", "Tokyo", "Lima", "Cairo", "Seoul", "Delhi", "Quito", "Sydney", "Boston")
JOBS = ("baker", "doctor", "teacher", "pilot", "farmer", "painter", "nurse", "lawyer", "chef", "driver",
        "singer", "writer", "tailor", "barber", "miner", "sailor", "judge", "coach", "clerk", "guard")
PETS = ("cat", "dog", "horse", "parrot", "rabbit", "turtle", "goat", "hamster", "fish", "snake")
WORDS = ("red", "blue", "green", "black", "white", "gold", "pink", "gray", "cat", "dog", "fox", "owl", "bee",
         "cow", "pig", "hen", "sun", "moon", "star", "rain", "snow", "wind", "tree", "rock", "lake", "hill",
         "road", "door", "book", "cup", "hat", "key")
ITEMS = ("apple", "lamp", "rope", "chair", "clock", "shoe", "bread", "coin", "glass", "brush", "knife", "plate",
         "shirt", "spoon", "table", "towel", "wheel", "nail", "bell", "box", "pen", "map", "ring", "bag")


class Problem(msgspec.Struct, frozen=True):
    """One task instance; `answer` is the assistant text without the end marker."""

    task: str  # a key of TASKS
    key: str  # canonical form: task + JSON parameters; decides the split
    prompt: str  # user message (plain text, no chat markup)
    answer: str  # expected assistant message (plain text, no end marker)


class TaskSpec(NamedTuple):
    draw: Callable[[random.Random], list]  # random parameters (JSON-serialisable)
    render: Callable[[list], tuple[str, str]]  # parameters -> (prompt, answer)


def _draw_arith(rng: random.Random) -> list:
    start = value = rng.randint(10, 59)
    ops = []
    for _ in range(3):
        b = rng.randint(2, 9)
        op = "-" if value + b > 99 else "+" if value - b < 0 else rng.choice("+-")
        value = value + b if op == "+" else value - b
        ops.append([op, b])
    return [start, ops]


def _render_arith(params: list) -> tuple[str, str]:
    value, ops = params
    expr, steps = str(value), []
    for op, b in ops:
        new = value + b if op == "+" else value - b
        expr += f"{op}{b}"
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return f"Compute {expr} step by step.", f"{', '.join(steps)}. Answer: {value}"


def _draw_sort(rng: random.Random) -> list:
    return rng.sample(range(10, 100), rng.randint(5, 7))


def _render_sort(params: list) -> tuple[str, str]:
    return (f"Sort ascending: {' '.join(map(str, params))}.",
            f"Sorted: {' '.join(map(str, sorted(params)))}.")


def _draw_reverse(rng: random.Random) -> list:
    return [rng.choice(WORDS) for _ in range(rng.randint(8, 12))]


def _render_reverse(params: list) -> tuple[str, str]:
    return f"Reverse the list: {', '.join(params)}.", f"Reversed: {', '.join(reversed(params))}."


def _draw_lookup(rng: random.Random) -> list:
    keys = rng.sample(ITEMS, 7)
    table = [[k, rng.randint(10, 99)] for k in keys]
    return [table, rng.sample(keys, 4)]


def _render_lookup(params: list) -> tuple[str, str]:
    table, queries = params
    values = dict((k, v) for k, v in table)
    prompt = f"Table: {', '.join(f'{k}={v}' for k, v in table)}. Look up: {', '.join(queries)}."
    return prompt, f"{', '.join(f'{q}={values[q]}' for q in queries)}."


def _draw_profile(rng: random.Random) -> list:
    return [rng.choice(NAMES), rng.randint(20, 69), rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS)]


def _render_profile(params: list) -> tuple[str, str]:
    name, age, city, job, pet = params
    prompt = f"Name: {name}. Age: {age}. City: {city}. Job: {job}. Pet: {pet}. Write a profile."
    answer = (f"{name} is {age} years old and lives in {city}. {name} works as a {job} and has a {pet}. "
              f"Next year {name} will be {age + 1}.")
    return prompt, answer


TASKS: dict[str, TaskSpec] = {
    "arith": TaskSpec(_draw_arith, _render_arith),
    "sort": TaskSpec(_draw_sort, _render_sort),
    "reverse": TaskSpec(_draw_reverse, _render_reverse),
    "lookup": TaskSpec(_draw_lookup, _render_lookup),
    "profile": TaskSpec(_draw_profile, _render_profile),
}


def canonical_key(task: str, params: list) -> str:
    return f"{task}:{json.dumps(params, separators=(',', ':'))}"


def split_of(key: str) -> str:
    """The split a canonical problem belongs to: a fixed hash partition, independent of any seed."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def make_problem(task: str, params: list) -> Problem:
    prompt, answer = TASKS[task].render(params)
    return Problem(task=task, key=canonical_key(task, params), prompt=prompt, answer=answer)


def draw_problem(rng: random.Random, task: str, split: str) -> Problem:
    """Rejection-sample a `task` problem until its canonical form hashes into `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    while True:
        params = TASKS[task].draw(rng)
        key = canonical_key(task, params)
        if split_of(key) == split:
            return make_problem(task, params)


def iter_problems(split: str, seed: int | str, tasks: Sequence[str] = tuple(TASKS)) -> Iterator[Problem]:
    """An endless, seed-determined stream of `split` problems, cycling through `tasks` in order."""
    rng = random.Random(f"sglang-focus-tasks:{split}:{seed}")
    i = 0
    while True:
        yield draw_problem(rng, tasks[i % len(tasks)], split)
        i += 1


def generate(split: str, n: int, seed: int | str = 0, tasks: Sequence[str] = tuple(TASKS)) -> list[Problem]:
    """The first `n` problems of `iter_problems(split, seed, tasks)`."""
    stream = iter_problems(split, seed, tasks)
    return [next(stream) for _ in range(n)]


def normalize(text: str) -> str:
    return " ".join(text.split())


def extract_answer(completion: str) -> str:
    """The completion up to the first end marker, whitespace-normalised."""
    for marker in END_MARKERS:
        completion = completion.split(marker, 1)[0]
    return normalize(completion)


def is_correct(problem: Problem, completion: str) -> bool:
    """Exact match of the completion (cut at the end marker, whitespace-normalised) against the answer."""
    return extract_answer(completion) == normalize(problem.answer)


def chat_prompt(user_text: str) -> str:
    """The tokenizer's chat template for one user turn with `add_generation_prompt=True`."""
    return f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"


def tokenizer_corpus(n: int = TOKENIZER_CORPUS_SIZE, seed: int = 0) -> Iterator[str]:
    """Training-split conversations without special tokens (the BPE trainer must not merge across them) and
    without digits: the task tokenizer splits digits one per token, so merges involving digits would be dead."""
    for problem in generate("train", n, seed=f"tokenizer:{seed}"):
        text = f"user\n{problem.prompt}\nassistant\n{problem.answer}\n"
        yield text.translate(_NO_DIGITS)


def build_task_tokenizer(vocab_size: int = TASK_VOCAB, seed: int = 0) -> Tokenizer:
    """The suite's byte-level BPE, with digits always split one per token (learnable arithmetic and sorting).

    The corpus holds no digits, so the single digits come from the byte alphabet and no merge is wasted on them.
    """
    tokenizer = train_tokenizer(tokenizer_corpus(seed=seed), vocab_size)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tokenizer


def save_task_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> dict[str, int]:
    """Write the tokenizer files next to a checkpoint; return the special ids (eos, pad, mask, bos)."""
    return save_tokenizer(tokenizer, Path(out_dir), model_max_length=2048)


def encode_problem(tokenizer: Tokenizer, problem: Problem) -> tuple[list[int], list[int]]:
    """(prompt ids through the chat template, answer ids ending with `<|im_end|>`)."""
    prompt = tokenizer.encode(chat_prompt(problem.prompt)).ids
    answer = tokenizer.encode(problem.answer).ids + [tokenizer.token_to_id(EOS_TOKEN)]
    return prompt, answer
