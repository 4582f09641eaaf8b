"""SGLang frontend programs (`@sgl.function`) against a `--focus` server on the bundled checkpoint.

    python -m sglang.launch_server --model-path models/sdar-tasks --focus --port 30000
    python examples/frontend_programs.py --base-url http://127.0.0.1:30000

The checkpoint was trained on the task suite (`sglang_focus.training.tasks`) in ChatML, which is SGLang's "chatml" chat
template, so `sgl.user()` / `sgl.assistant()` build exactly the prompts it saw in training. Four programs:
one question (`sgl.gen()`), a two-turn conversation, parallel questions through `s.fork(n)`, and `sgl.select()`,
which needs prompt log-probabilities that block-diffusion decoding does not produce: the server refuses it with
HTTP 400 and `run_program` raises that message.
"""

from __future__ import annotations

import argparse
from typing import Sequence

import sglang as sgl

from sglang_focus.bench.frontend import programs_collected_safely
from sglang_focus.training import tasks

MAX_TOKENS = 64


class ProgramError(RuntimeError):
    """A frontend program failed; the message is the server's (or the frontend's) error."""


def backend(base_url: str) -> sgl.RuntimeEndpoint:
    """A RuntimeEndpoint speaking the checkpoint's chat format (ChatML, no system prompt)."""
    return sgl.RuntimeEndpoint(base_url, chat_template_name="chatml")


@sgl.function
def answer(s, question):
    s += sgl.user(question)
    s += sgl.assistant(sgl.gen("answer", max_tokens=MAX_TOKENS, temperature=0))


@sgl.function
def two_turns(s, first, second):
    s += sgl.user(first)
    s += sgl.assistant(sgl.gen("first", max_tokens=MAX_TOKENS, temperature=0))
    s += sgl.user(second)
    s += sgl.assistant(sgl.gen("second", max_tokens=MAX_TOKENS, temperature=0))


@sgl.function
def parallel_answers(s, questions):
    forks = s.fork(len(questions))
    for fork, question in zip(forks, questions):
        fork += sgl.user(question)
        fork += sgl.assistant(sgl.gen("answer", max_tokens=MAX_TOKENS, temperature=0))
    s.set_var("answers", [fork["answer"] for fork in forks])


@sgl.function
def pick_task(s, question):
    s += sgl.user(f"{question} Which task is this?")
    s += sgl.assistant(sgl.select("task", choices=list(tasks.SUITES[tasks.DEFAULT_SUITE])))


def run_program(program, endpoint: sgl.RuntimeEndpoint, **arguments):
    """Run `program` and return its state; raises ProgramError with the cause if any step failed.

    SGLang's frontend runs programs on a worker thread and only records a failure (`state.error()`), leaving the
    failed variable unset, so a caller would otherwise see a KeyError instead of the server's message.
    """
    with programs_collected_safely():  # SGLang's frontend threads can deadlock in the garbage collector otherwise
        state = program.run(backend=endpoint, **arguments)
        error = state.error()
    if error is not None:
        raise ProgramError(f"{program.func.__name__} failed: {server_message(error)}") from error
    return state


def server_message(error: BaseException) -> str:
    """The server's error message when `error` carries its JSON reply (RuntimeEndpoint raises RuntimeError(reply)),
    else the error itself."""
    reply = error.args[0] if error.args else None
    if isinstance(reply, dict) and isinstance(reply.get("error"), dict) and "message" in reply["error"]:
        return reply["error"]["message"]
    return f"{type(error).__name__}: {error}"


def solve(endpoint, problem: tasks.Problem) -> str:
    return run_program(answer, endpoint, question=problem.prompt)["answer"]


def solve_two_turns(endpoint, first: tasks.Problem, second: tasks.Problem) -> tuple[str, str]:
    state = run_program(two_turns, endpoint, first=first.prompt, second=second.prompt)
    return state["first"], state["second"]


def solve_in_parallel(endpoint, problems: Sequence[tasks.Problem]) -> list[str]:
    return run_program(parallel_answers, endpoint, questions=[p.prompt for p in problems])["answers"]


def classify(endpoint, problem: tasks.Problem) -> str:
    return run_program(pick_task, endpoint, question=problem.prompt)["task"]


def show(label: str, problem: tasks.Problem, reply: str) -> bool:
    ok = tasks.is_correct(problem, reply)
    print(f"[{label}] {problem.prompt}\n    {'✓' if ok else '✗'} {tasks.extract_answer(reply)}")
    return ok


def main(base_url: str) -> None:
    endpoint = backend(base_url)
    problems = tasks.generate("heldout", 6, seed="frontend")
    show("gen", problems[0], solve(endpoint, problems[0]))
    for label, problem, reply in zip(("turn 1", "turn 2"), problems[1:3], solve_two_turns(endpoint, *problems[1:3])):
        show(label, problem, reply)
    for index, (problem, reply) in enumerate(zip(problems[3:], solve_in_parallel(endpoint, problems[3:]))):
        show(f"fork {index}", problem, reply)
    try:
        print(f"[select] {classify(endpoint, problems[0])}")
    except ProgramError as exc:
        print(f"[select] not supported: {exc}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:30000")
    main(parser.parse_args().base_url)
