"""`make demo`: serve the embedded block-diffusion model with `--focus` and let it chat and solve held-out problems.

Starts `python -m sglang.launch_server --model-path <the embedded default> --focus` on 127.0.0.1 and sends, as one
SGLang frontend program (`sgl.gen()`, run as a batch), a few held-out chat prompts (shown, with FOCUS's
per-request stats; a chat model only) and one held-out problem of each task family (each answer checked: ✓ when it
is exactly right, ✗ with the expected answer when not); then one chat prompt and one problem through the OpenAI chat
API; then it stops the server. `--model-path` serves another checkpoint trained on a task suite.

The demo's batch is small, below FOCUS's memory-bound guard (`min_batch_tokens`, 128 processed block rows by
default), where a server would not evict; the demo turns the guard off so that eviction shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from sglang_focus.training import tasks
from sglang_focus.bench.frontend import programs_collected_safely
from sglang_focus.bench.local_server import LocalServer, ServerStartError, serving_dtype
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT, block_size_of

RIGHT, WRONG = "✓", "✗"
DEMO_MIN_BATCH_TOKENS = 0  # evict at any batch size (see the module docstring)
CHAT_PROMPTS = 3  # held-out chat prompts asked through the frontend program (one more through the OpenAI API)
CHAT_MAX_TOKENS = 64


@dataclass(frozen=True)
class Question:
    """One demo request: the user turn, the full prompt text the frontend program sends, and its token budget;
    `problem` is set for a task problem (its answer is checked), None for a chat prompt (its answer is shown)."""

    user: str
    prompt_text: str
    max_tokens: int
    problem: tasks.Problem | None = None


def is_chat_model(model_path: Path) -> bool:
    """A checkpoint with a chat template of its own (the SmolLM2 conversion) is asked chat prompts too; the
    from-scratch task models only know the task format."""
    return (model_path / "chat_template.jinja").exists()


def chat_questions(n: int) -> list[Question]:
    """The first `n` held-out prompts of the chat data set, in SmolLM2's chat format with its system prompt."""
    from sglang_focus.training import chat_data

    held_out = chat_data.load(chat_data.DATA_FILE, "heldout")[:n]
    return [Question(r["prompt"], chat_data.chat_text(r["prompt"]), CHAT_MAX_TOKENS) for r in held_out]


def task_questions(model_path: Path, seed: str, n: int) -> list[Question]:
    """`n` held-out problems of the checkpoint's task suite (cycling through its families), as trained."""
    problems = tasks.generate("heldout", n, seed=seed, tasks=tasks.suite_of(model_path))
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    budget = tasks.answer_token_budget(tokenizer, problems, block_size_of(model_path))
    return [Question(p.prompt, tasks.chat_prompt(p.prompt), budget, p) for p in problems]


def ask_with_frontend_program(base_url: str, questions: list[Question]) -> list[tuple[str, dict]]:
    """(answer, FOCUS stats) per question, from one `sgl.gen()` program run as a batch."""
    import sglang as sgl

    @sgl.function
    def answer(s, prompt_text, max_tokens):
        s += prompt_text
        s += sgl.gen("answer", max_tokens=max_tokens)

    with programs_collected_safely():
        states = answer.run_batch([{"prompt_text": q.prompt_text, "max_tokens": q.max_tokens} for q in questions],
                                  backend=sgl.RuntimeEndpoint(base_url))
        return [(state["answer"], _stats(state.get_meta_info("answer"))) for state in states]


def ask_with_openai_chat(base_url: str, question: Question) -> tuple[str, dict]:
    """The answer through the OpenAI chat API (the server applies the model's chat template; no FOCUS stats)."""
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(model="default", max_tokens=question.max_tokens, temperature=0.0,
                                           messages=[{"role": "user", "content": question.user}])
    return reply.choices[0].message.content or "", {}


def _stats(meta_info: dict | None) -> dict:
    return (meta_info or {}).get("focus_stats") or {}


def show(label: str, question: Question, answer: str, stats: dict) -> bool | None:
    """Print one answer; for a task problem, whether it is exactly right (None for a chat prompt)."""
    ok = None if question.problem is None else tasks.is_correct(question.problem, answer)
    if question.problem is None:
        print(f"[{label}] chat: {question.user}")
        print(f"  → {tasks.extract_answer(answer)}")
    else:
        print(f"[{label}] {question.problem.task}: {question.user}")
        print(f"  {RIGHT if ok else WRONG} {tasks.extract_answer(answer)}")
        if not ok:
            print(f"    expected: {question.problem.answer}")
    if stats:
        print(f"    {stats['forwards']} forwards, {stats['tokens_per_forward']:.2f} tokens/forward, "
              f"{100 * stats['masked_kept_ratio']:.0f}% of masked rows kept past layer 1")
    return ok


def start_server(model_path: Path, log: Path) -> LocalServer:
    """A `--focus` server for the demo (eviction at any batch size), started; exits with a clear error if not."""
    config = Path(tempfile.mkdtemp(prefix="sglang-focus-demo-")) / "focus.yaml"
    config.write_text(f"min_batch_tokens: {DEMO_MIN_BATCH_TOKENS}\n")
    dtype = serving_dtype()
    print(f"Starting: python -m sglang.launch_server --model-path {model_path} --focus --focus-config {config}"
          f" --dtype {dtype}  (min_batch_tokens: {DEMO_MIN_BATCH_TOKENS}, so that this small batch evicts; log: "
          f"{log})", flush=True)
    started = time.monotonic()
    server_args = ["--focus", "--focus-config", str(config), "--max-running-requests", "16", "--dtype", dtype]
    try:
        server = LocalServer(model_path, server_args, log_path=log)
        server.start()
    except ServerStartError as err:
        sys.exit(f"demo: error: {err}")
    print(f"Server ready at {server.base_url} after {time.monotonic() - started:.0f}s\n", flush=True)
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_focus.bench.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT)
    parser.add_argument("--seed", default="demo", help="which held-out problems to ask")
    parser.add_argument("--log", type=Path, default=Path(".cache/demo-server.log"))
    args = parser.parse_args(argv)
    for name in ("config.json", "tokenizer.json"):
        if not (args.model_path / name).exists():
            hint = " (run `make setup` to build it)" if args.model_path == EMBEDDED_DEFAULT else ""
            parser.error(f"--model-path {args.model_path}: no {name} (expected a checkpoint trained on the tasks)"
                         f"{hint}")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    families = tasks.suite_of(args.model_path)
    chat = chat_questions(CHAT_PROMPTS + 1) if is_chat_model(args.model_path) else []
    problems = task_questions(args.model_path, args.seed, len(families) + 1)
    batch, by_openai = chat[:-1] + problems[:-1], chat[-1:] + problems[-1:]

    with start_server(args.model_path, args.log) as server:
        replies = ask_with_frontend_program(server.base_url, batch)
        marks = [show("sgl.gen() program", q, *reply) for q, reply in zip(batch, replies)]
        marks += [show("OpenAI chat API", q, *ask_with_openai_chat(server.base_url, q)) for q in by_openai]
    checked = [m for m in marks if m is not None]
    print(f"\n{sum(checked)}/{len(checked)} task answers exactly right (held-out problems the model never trained "
          f"on){f'; {len(marks) - len(checked)} chat answers shown' if chat else ''}.")
    print("Server stopped.")


if __name__ == "__main__":
    main()
