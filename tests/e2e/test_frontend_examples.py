"""examples/frontend_programs.py against real servers on the bundled checkpoint: each SGLang frontend program builds
the checkpoint's chat prompts and returns what the server decodes for them; `sgl.select()` fails with the cause."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from sglang_focus.training import tasks

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
_spec = importlib.util.spec_from_file_location("frontend_programs", EXAMPLES / "frontend_programs.py")
frontend = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(frontend)

PROBLEMS = tasks.generate("heldout", 6, seed="frontend-test")
END_OF_TURN = "<|im_end|>\n"


@pytest.fixture(scope="module")
def endpoint(bundled_focus_server):
    return frontend.backend(bundled_focus_server.base_url)


def server_answer(server, prompt_text: str) -> str:
    """What /generate decodes for `prompt_text` with the programs' settings (greedy, MAX_TOKENS)."""
    resp = server.generate({"text": prompt_text,
                            "sampling_params": {"max_new_tokens": frontend.MAX_TOKENS, "temperature": 0}})
    assert resp.status_code == 200, resp.text
    return resp.json()["text"]


def test_gen_program_asks_in_the_chat_format(bundled_focus_server, endpoint):
    problem = PROBLEMS[0]
    state = frontend.run_program(frontend.answer, endpoint, question=problem.prompt)
    assert state.text() == tasks.chat_prompt(problem.prompt) + state["answer"] + END_OF_TURN
    assert state["answer"] == server_answer(bundled_focus_server, tasks.chat_prompt(problem.prompt))
    assert state.get_meta_info("answer")["focus_stats"]["forwards"] > 0, "a FOCUS server decoded it"


def test_two_turn_program_appends_the_first_answer_and_a_second_user_turn(bundled_focus_server, endpoint):
    first, second = PROBLEMS[1:3]
    state = frontend.run_program(frontend.two_turns, endpoint, first=first.prompt, second=second.prompt)
    second_prompt = tasks.chat_prompt(first.prompt) + state["first"] + END_OF_TURN + tasks.chat_prompt(second.prompt)
    assert state.text() == second_prompt + state["second"] + END_OF_TURN
    assert state["second"] == server_answer(bundled_focus_server, second_prompt)


def test_fork_answers_each_question_as_a_single_request_would(bundled_focus_server, endpoint):
    problems = PROBLEMS[2:6]
    answers = frontend.solve_in_parallel(endpoint, problems)
    assert answers == [server_answer(bundled_focus_server, tasks.chat_prompt(p.prompt)) for p in problems]


@pytest.mark.parametrize("arm", ["stock", "focus"])
def test_select_fails_with_a_message_naming_log_probabilities(request, arm):
    server = request.getfixturevalue(f"bundled_{arm}_server")
    with pytest.raises(frontend.ProgramError, match="'return_logprob'") as failure:
        frontend.classify(frontend.backend(server.base_url), PROBLEMS[0])
    assert "sgl.select()" in str(failure.value)
    assert server_answer(server, tasks.chat_prompt(PROBLEMS[0].prompt)), "the server keeps serving"


def test_example_main_marks_every_answer(bundled_focus_server, capsys):
    frontend.main(bundled_focus_server.base_url)
    out = capsys.readouterr().out
    marks = [line.strip()[0] for line in out.splitlines() if line.strip()[:1] in ("✓", "✗")]
    assert len(marks) == 6
    assert "[select] not supported:" in out and "'return_logprob'" in out
