"""A seeded synthetic task suite with exactly checked answers, for training and scoring the bundled checkpoint.

The suite is built so that a model decodes it the way real diffusion LLMs decode text: few tokens per step and
roughly left to right. Every family has at least one of the two properties that force that:

* later answer tokens depend on earlier *answer* tokens, not only on the prompt (a state is carried along);
* several answers are valid and the first choice constrains the rest, so a position only becomes certain once the
  positions before it are fixed.

Copy-like content (names, values from the prompt) sits inside every answer, as it does in real answers.

* `walk`: trace a walk on a 10 x 10 grid; every position is the previous one moved by the next listed move.
* `chain`: add a list of digits one by one keeping only the last digit; every step starts from the previous result.
* `sort`: sort 5-7 distinct two-digit numbers; each number is the smallest one above the previous.
* `pick`: name every item of two given colours, each group in any order (all orders are accepted).
* `story`: tell four people's facts as sentences, in any order (all orders are accepted).
* `invent` (tasks-v3): invent a city and a job for each named person, all cities and all jobs different.
* `pack` (tasks-v3): list 3-5 different items for a person, each with any colour but a forbidden one.

The two tasks-v3 families are free-choice grammars: most answer slots take any of 4-24 words, so a trained model
is uncertain there as a real dLLM is on text, and each choice constrains the later ones (no repeats). Their valid
answers are too many to list; a parser checks them (`TaskSpec.check`) and training draws one at random
(`TaskSpec.sample`).

A problem is fully determined by its task and parameters; their canonical form (`Problem.key`) is hashed into the
"train" or "heldout" split (`split_of`), so the two splits are disjoint by construction whatever the seeds. For the
any-order families the order is not part of the key: training draws a random valid order per sample
(`training_answer`), scoring accepts every valid order (`is_correct`). Prompts are the user turn of the
tokenizer's chat template; answers are the assistant turn and end with `<|im_end|>`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Sequence

import msgspec
from tokenizers import Tokenizer, pre_tokenizers

from sglang_focus.training.tokenizer import EOS_TOKEN, PAD_TOKEN, save_tokenizer, train_tokenizer

SPLITS = ("train", "heldout")
HELDOUT_PERCENT = 10  # share of the problem space whose hash puts it in "heldout"
END_MARKERS = (EOS_TOKEN, PAD_TOKEN)  # a completion's answer stops at the first of these
TASK_VOCAB = 1024  # BPE stops merging well below this on the corpus; the model pads its vocabulary to 64
TOKENIZER_CORPUS_SIZE = 4000
_NO_DIGITS = str.maketrans("", "", "0123456789")

NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Iris", "Jack", "Kate", "Leo",
         "Mia", "Noah", "Olga", "Paul", "Quinn", "Rosa", "Sam", "Tina", "Uma", "Victor", "Wendy", "Yuri")
CITIES = ("Paris", "Berlin", "Madrid", "Rome", "Vienna", "Oslo", "Lisbon", "Prague", "Dublin", "Warsaw",
          "Athens", "Zurich", "Tokyo", "Lima", "Cairo", "Seoul", "Delhi", "Quito", "Sydney", "Boston")
JOBS = ("baker", "doctor", "teacher", "pilot", "farmer", "painter", "nurse", "lawyer", "chef", "driver",
        "singer", "writer", "tailor", "barber", "miner", "sailor", "judge", "coach", "clerk", "guard")
ITEMS = ("apple", "lamp", "rope", "chair", "clock", "shoe", "bread", "coin", "glass", "brush", "knife", "plate",
         "shirt", "spoon", "table", "towel", "wheel", "nail", "bell", "box", "pen", "map", "ring", "bag")
PETS = ("cat", "dog", "horse", "parrot", "rabbit", "turtle", "goat", "hamster", "fish", "snake")
WORDS = ("red", "blue", "green", "black", "white", "gold", "pink", "gray", "cat", "dog", "fox", "owl", "bee",
         "cow", "pig", "hen", "sun", "moon", "star", "rain", "snow", "wind", "tree", "rock", "lake", "hill",
         "road", "door", "book", "cup", "hat", "key")
COLOURS = ("red", "blue", "green", "black", "white")
MOVES = {"up": (0, 1), "down": (0, -1), "left": (-1, 0), "right": (1, 0)}
GRID = 10  # walk coordinates stay in 0..GRID-1: one digit each
PICK_ITEMS = 10  # items listed in a `pick` prompt, 2-4 of each asked colour
STORY_PEOPLE = 4


class Problem(msgspec.Struct, frozen=True):
    """One task instance; `answer` is one valid assistant text (the canonical one) without the end marker."""

    task: str  # a key of TASKS
    key: str  # canonical form: task + JSON parameters; decides the split
    params: list  # the task parameters `key` was made from (JSON-serialisable)
    prompt: str  # user message (plain text, no chat markup)
    answer: str  # canonical expected assistant message (plain text, no end marker)


class TaskSpec(NamedTuple):
    draw: Callable[[random.Random], list]  # random parameters (JSON-serialisable)
    prompt: Callable[[list], str]  # parameters -> user message
    # parameters -> every valid answer, the first canonical; with `check`: only the canonical one
    answers: Callable[[list], list[str]]
    # free-choice families: (parameters, normalised answer) -> valid?, and a uniformly drawn valid answer
    check: Callable[[list, str], bool] | None = None
    sample: Callable[[list, random.Random], str] | None = None


# tasks-v1 (the 16-token checkpoint `models/sdar-tasks`) -----------------------------------------------------------

def _draw_arith(rng: random.Random) -> list:
    start = value = rng.randint(10, 59)
    ops = []
    for _ in range(3):
        b = rng.randint(2, 9)
        op = "-" if value + b > 99 else "+" if value - b < 0 else rng.choice("+-")
        value = value + b if op == "+" else value - b
        ops.append([op, b])
    return [start, ops]


def _arith_prompt(params: list) -> str:
    start, ops = params
    return f"Compute {start}{''.join(f'{op}{b}' for op, b in ops)} step by step."


def _arith_answers(params: list) -> list[str]:
    value, ops = params
    steps = []
    for op, b in ops:
        new = value + b if op == "+" else value - b
        steps.append(f"{value}{op}{b}={new}")
        value = new
    return [f"{', '.join(steps)}. Answer: {value}"]


def _draw_reverse(rng: random.Random) -> list:
    return [rng.choice(WORDS) for _ in range(rng.randint(8, 12))]


def _reverse_prompt(params: list) -> str:
    return f"Reverse the list: {', '.join(params)}."


def _reverse_answers(params: list) -> list[str]:
    return [f"Reversed: {', '.join(reversed(params))}."]


def _draw_lookup(rng: random.Random) -> list:
    keys = rng.sample(ITEMS, 7)
    return [[[k, rng.randint(10, 99)] for k in keys], rng.sample(keys, 4)]


def _lookup_prompt(params: list) -> str:
    table, queries = params
    return f"Table: {', '.join(f'{k}={v}' for k, v in table)}. Look up: {', '.join(queries)}."


def _lookup_answers(params: list) -> list[str]:
    table, queries = params
    values = dict((k, v) for k, v in table)
    return [f"{', '.join(f'{q}={values[q]}' for q in queries)}."]


def _draw_profile(rng: random.Random) -> list:
    return [rng.choice(NAMES), rng.randint(20, 69), rng.choice(CITIES), rng.choice(JOBS), rng.choice(PETS)]


def _profile_prompt(params: list) -> str:
    name, age, city, job, pet = params
    return f"Name: {name}. Age: {age}. City: {city}. Job: {job}. Pet: {pet}. Write a profile."


def _profile_answers(params: list) -> list[str]:
    name, age, city, job, pet = params
    return [f"{name} is {age} years old and lives in {city}. {name} works as a {job} and has a {pet}. "
            f"Next year {name} will be {age + 1}."]


# walk -----------------------------------------------------------------------------------------------------------

def _draw_walk(rng: random.Random) -> list:
    x, y = rng.randrange(GRID), rng.randrange(GRID)
    start, moves = [x, y], []
    for _ in range(rng.randint(6, 9)):
        name = rng.choice([m for m, (dx, dy) in MOVES.items() if 0 <= x + dx < GRID and 0 <= y + dy < GRID])
        x, y = x + MOVES[name][0], y + MOVES[name][1]
        moves.append(name)
    return [start, moves]


def _walk_prompt(params: list) -> str:
    (x, y), moves = params
    return f"Start at ({x},{y}). Moves: {', '.join(moves)}. Trace the walk."


def _walk_answers(params: list) -> list[str]:
    (x, y), moves = params
    trace = []
    for name in moves:
        x, y = x + MOVES[name][0], y + MOVES[name][1]
        trace.append(f"{name} ({x},{y})")
    return [f"{', '.join(trace)}. End: ({x},{y})."]


# chain ----------------------------------------------------------------------------------------------------------

def _draw_chain(rng: random.Random) -> list:
    return [rng.randrange(10), [rng.randint(1, 9) for _ in range(rng.randint(6, 8))]]


def _chain_prompt(params: list) -> str:
    start, digits = params
    return f"Start with {start}. Add {' '.join(map(str, digits))}, keeping the last digit."


def _chain_answers(params: list) -> list[str]:
    value, digits = params
    steps = []
    for d in digits:
        steps.append(f"{value}+{d}={(value + d) % 10}")
        value = (value + d) % 10
    return [f"{', '.join(steps)}. Answer: {value}."]


# sort -----------------------------------------------------------------------------------------------------------

def _draw_sort(rng: random.Random) -> list:
    return rng.sample(range(10, 100), rng.randint(5, 7))


def _sort_prompt(params: list) -> str:
    return f"Sort ascending: {' '.join(map(str, params))}."


def _sort_answers(params: list) -> list[str]:
    return [f"Sorted: {' '.join(map(str, sorted(params)))}."]


# pick -----------------------------------------------------------------------------------------------------------

def _draw_pick(rng: random.Random) -> list:
    asked = rng.sample(COLOURS, 2)
    colours = [c for c in asked for _ in range(rng.randint(2, 4))]
    colours += [rng.choice([c for c in COLOURS if c not in asked]) for _ in range(PICK_ITEMS - len(colours))]
    rng.shuffle(colours)
    return [[[c, item] for c, item in zip(colours, rng.sample(ITEMS, PICK_ITEMS))], asked]


def _pick_prompt(params: list) -> str:
    table, asked = params
    items = ", ".join(f"{c} {item}" for c, item in table)
    return f"Items: {items}. Name every {asked[0]} and every {asked[1]} item, any order."


def _pick_answers(params: list) -> list[str]:
    table, asked = params
    groups = [[item for c, item in table if c == colour] for colour in asked]
    orders = [list(itertools.permutations(group)) for group in groups]
    return [f"{asked[0].capitalize()}: {', '.join(a)}. {asked[1].capitalize()}: {', '.join(b)}."
            for a, b in itertools.product(*orders)]


# story ----------------------------------------------------------------------------------------------------------

def _draw_story(rng: random.Random) -> list:
    return [list(person) for person in zip(*(rng.sample(pool, STORY_PEOPLE) for pool in (NAMES, CITIES, JOBS)))]


def _story_prompt(params: list) -> str:
    facts = "; ".join(f"{name}, {city}, {job}" for name, city, job in params)
    return f"Facts: {facts}. Tell them in any order."


def _story_answers(params: list) -> list[str]:
    sentences = [f"{name} lives in {city} and works as a {job}." for name, city, job in params]
    return [" ".join(order) for order in itertools.permutations(sentences)]


# invent ---------------------------------------------------------------------------------------------------------

def _draw_invent(rng: random.Random) -> list:
    return rng.sample(NAMES, rng.randint(3, 4))


def _invent_prompt(params: list) -> str:
    return f"Invent facts for {', '.join(params[:-1])} and {params[-1]}."


def _invent_sentences(names: Sequence[str], cities: Sequence[str], jobs: Sequence[str]) -> str:
    return " ".join(f"{name} lives in {city} and works as a {job}." for name, city, job in zip(names, cities, jobs))


def _invent_answers(params: list) -> list[str]:
    return [_invent_sentences(params, CITIES, JOBS)]


def _invent_sample(params: list, rng: random.Random) -> str:
    return _invent_sentences(params, rng.sample(CITIES, len(params)), rng.sample(JOBS, len(params)))


def _invent_check(params: list, answer: str) -> bool:
    """Each named person in prompt order, in a known city and job; no city and no job twice."""
    pattern = r"(\w+) lives in (\w+) and works as a (\w+)\."
    found = re.fullmatch(" ".join([pattern] * len(params)), answer)
    if found is None:
        return False
    names, cities, jobs = (list(found.groups()[i::3]) for i in range(3))
    return (names == list(params) and all(c in CITIES for c in cities) and all(j in JOBS for j in jobs)
            and len(set(cities)) == len(cities) and len(set(jobs)) == len(jobs))


# pack -----------------------------------------------------------------------------------------------------------

def _draw_pack(rng: random.Random) -> list:
    return [rng.choice(NAMES), rng.choice(CITIES), rng.randint(3, 5), rng.choice(COLOURS)]


def _pack_prompt(params: list) -> str:
    name, city, count, banned = params
    return f"Pack {count} things for {name} in {city}, no {banned}."


def _pack_list(name: str, city: str, pairs: Sequence[tuple[str, str]]) -> str:
    things = [f"a {colour} {item}" for colour, item in pairs]
    return f"{name} in {city} packs {', '.join(things[:-1])} and {things[-1]}."


def _pack_answers(params: list) -> list[str]:
    name, city, count, banned = params
    allowed = [c for c in COLOURS if c != banned]
    return [_pack_list(name, city, [(allowed[i % len(allowed)], ITEMS[i]) for i in range(count)])]


def _pack_sample(params: list, rng: random.Random) -> str:
    name, city, count, banned = params
    allowed = [c for c in COLOURS if c != banned]
    return _pack_list(name, city, [(rng.choice(allowed), item) for item in rng.sample(ITEMS, count)])


def _pack_check(params: list, answer: str) -> bool:
    """`count` known items, none twice, each with a known colour other than the banned one."""
    name, city, count, banned = params
    thing = r"a (\w+) (\w+)"
    found = re.fullmatch(f"{re.escape(name)} in {re.escape(city)} packs "
                         + ", ".join([thing] * (count - 1)) + f" and {thing}\\.", answer)
    if found is None:
        return False
    colours, items = list(found.groups()[0::2]), list(found.groups()[1::2])
    return (all(c in COLOURS and c != banned for c in colours) and all(i in ITEMS for i in items)
            and len(set(items)) == count)


TASKS: dict[str, TaskSpec] = {
    "arith": TaskSpec(_draw_arith, _arith_prompt, _arith_answers),
    "reverse": TaskSpec(_draw_reverse, _reverse_prompt, _reverse_answers),
    "lookup": TaskSpec(_draw_lookup, _lookup_prompt, _lookup_answers),
    "profile": TaskSpec(_draw_profile, _profile_prompt, _profile_answers),
    "walk": TaskSpec(_draw_walk, _walk_prompt, _walk_answers),
    "chain": TaskSpec(_draw_chain, _chain_prompt, _chain_answers),
    "sort": TaskSpec(_draw_sort, _sort_prompt, _sort_answers),
    "pick": TaskSpec(_draw_pick, _pick_prompt, _pick_answers),
    "story": TaskSpec(_draw_story, _story_prompt, _story_answers),
    "invent": TaskSpec(_draw_invent, _invent_prompt, _invent_answers, _invent_check, _invent_sample),
    "pack": TaskSpec(_draw_pack, _pack_prompt, _pack_answers, _pack_check, _pack_sample),
}

# A checkpoint is trained on one suite and names it in its config.json (`task_suite`; absent: the first suite).
SUITES: dict[str, tuple[str, ...]] = {
    "tasks-v1": ("arith", "sort", "reverse", "lookup", "profile"),
    "tasks-v2": ("walk", "chain", "sort", "pick", "story"),
    # free-choice grammars with the one learned state-tracking family (fine-tuned from a tasks-v2 checkpoint)
    "tasks-v3": ("invent", "pack", "chain"),
    # every family, for the SmolLM2 conversion (a pretrained model copies by content, which no from-scratch model
    # learned); `training.finetune` trains on it
    "tasks-all": ("arith", "sort", "reverse", "lookup", "profile", "walk", "chain", "pick", "story", "invent", "pack"),
}
DEFAULT_SUITE = "tasks-v1"  # the suite of `models/sdar-tasks` (a checkpoint names its own in config.json)
NEWEST_SUITE = "tasks-v2"  # what `train` trains on unless told otherwise
SUITE_CONFIG_KEY = "task_suite"


def canonical_key(task: str, params: list) -> str:
    return f"{task}:{json.dumps(params, separators=(',', ':'))}"


def split_of(key: str) -> str:
    """The split a canonical problem belongs to: a fixed hash partition, independent of any seed."""
    bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def make_problem(task: str, params: list) -> Problem:
    spec = TASKS[task]
    return Problem(task=task, key=canonical_key(task, params), params=params, prompt=spec.prompt(params),
                   answer=spec.answers(params)[0])


def draw_problem(rng: random.Random, task: str, split: str) -> Problem:
    """Rejection-sample a `task` problem until its canonical form hashes into `split`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    while True:
        params = TASKS[task].draw(rng)
        if split_of(canonical_key(task, params)) == split:
            return make_problem(task, params)


def config_suite(config: dict) -> tuple[str, ...]:
    """The task families a checkpoint with this config.json was trained on (`task_suite`; absent: the first)."""
    name = config.get(SUITE_CONFIG_KEY, next(iter(SUITES)))
    if name not in SUITES:
        raise ValueError(f"unknown task_suite {name!r} in the checkpoint config (known: {', '.join(SUITES)})")
    return SUITES[name]


def suite_of(model_dir: Path) -> tuple[str, ...]:
    """The task families the checkpoint in `model_dir` was trained on."""
    return config_suite(json.loads((Path(model_dir) / "config.json").read_text()))


def iter_problems(split: str, seed: int | str, tasks: Sequence[str] = SUITES[DEFAULT_SUITE]) -> Iterator[Problem]:
    """An endless, seed-determined stream of `split` problems, cycling through `tasks` in order."""
    rng = random.Random(f"sglang-focus-tasks:{split}:{seed}")
    i = 0
    while True:
        yield draw_problem(rng, tasks[i % len(tasks)], split)
        i += 1


def generate(split: str, n: int, seed: int | str = 0, tasks: Sequence[str] = SUITES[DEFAULT_SUITE]) -> list[Problem]:
    """The first `n` problems of `iter_problems(split, seed, tasks)`."""
    stream = iter_problems(split, seed, tasks)
    return [next(stream) for _ in range(n)]


def valid_answers(problem: Problem) -> list[str]:
    """Every accepted assistant text of `problem` (one for the sequential families, every order for the any-order
    ones); the free-choice families have too many to list and refuse."""
    spec = TASKS[problem.task]
    if spec.check is not None:
        raise ValueError(f"{problem.task!r} answers are checked by a parser, not listed (use is_correct)")
    return spec.answers(problem.params)


def training_answer(problem: Problem, rng: random.Random) -> str:
    """The answer a training sample uses: a uniformly drawn valid answer (the canonical one when there is one)."""
    spec = TASKS[problem.task]
    return spec.sample(problem.params, rng) if spec.sample is not None else rng.choice(valid_answers(problem))


def normalize(text: str) -> str:
    return " ".join(text.split())


def extract_answer(completion: str) -> str:
    """The completion up to the first end marker, whitespace-normalised."""
    for marker in END_MARKERS:
        completion = completion.split(marker, 1)[0]
    return normalize(completion)


def is_correct(problem: Problem, completion: str) -> bool:
    """The completion (cut at the end marker, whitespace-normalised) is one of the problem's valid answers."""
    spec, answer = TASKS[problem.task], extract_answer(completion)
    if spec.check is not None:
        return spec.check(problem.params, answer)
    return answer in {normalize(a) for a in valid_answers(problem)}


def chat_prompt(user_text: str) -> str:
    """The tokenizer's chat template for one user turn with `add_generation_prompt=True`."""
    return f"<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"


def tokenizer_corpus(tasks: Sequence[str], n: int = TOKENIZER_CORPUS_SIZE, seed: int = 0) -> Iterator[str]:
    """Training-split conversations of `tasks` without special tokens (the BPE trainer must not merge across
    them) and without digits: the task tokenizer splits digits one per token, so merges with digits would be dead."""
    for problem in generate("train", n, seed=f"tokenizer:{seed}", tasks=tasks):
        text = f"user\n{problem.prompt}\nassistant\n{problem.answer}\n"
        yield text.translate(_NO_DIGITS)


def build_task_tokenizer(tasks: Sequence[str] = SUITES[DEFAULT_SUITE], vocab_size: int = TASK_VOCAB,
                         seed: int = 0) -> Tokenizer:
    """The byte-level BPE of a suite's `tasks`, with digits always split one per token (learnable arithmetic and sorting).

    The corpus holds no digits, so the single digits come from the byte alphabet and no merge is wasted on them.
    """
    tokenizer = train_tokenizer(tokenizer_corpus(tasks, seed=seed), vocab_size)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    return tokenizer


def save_task_tokenizer(tokenizer: Tokenizer, out_dir: Path) -> dict[str, int]:
    """Write the tokenizer files next to a checkpoint; return the special ids (eos, pad, mask, bos)."""
    return save_tokenizer(tokenizer, Path(out_dir), model_max_length=2048)


def encode_problem(tokenizer: Tokenizer, problem: Problem, answer: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids through the chat template, ids of `answer` (default: the canonical one) ending with
    `<|im_end|>`)."""
    prompt = tokenizer.encode(chat_prompt(problem.prompt)).ids
    text = problem.answer if answer is None else answer
    return prompt, tokenizer.encode(text).ids + [tokenizer.token_to_id(EOS_TOKEN)]


def answer_token_budget(tokenizer: Tokenizer, problems: Sequence[Problem], block_size: int) -> int:
    """`max_new_tokens` that fits the longest canonical answer of `problems` and its `<|im_end|>`, rounded up to
    whole blocks of `block_size` (a dLLM decodes whole blocks; every valid order of an answer has its length)."""
    longest = max(len(encode_problem(tokenizer, problem)[1]) for problem in problems)
    return -(-longest // block_size) * block_size
