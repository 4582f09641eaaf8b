"""`make demo`: serve the bundled block-diffusion model with `--focus` and let it solve a few held-out problems.

Starts `python -m sglang.launch_server --model-path <the embedded default> --focus` on 127.0.0.1, asks one held-out
problem of each task through an SGLang frontend program (`sgl.gen()`, run as a batch) and one through the OpenAI
chat API, prints each answer with a mark saying whether it is exactly right (and the expected answer when it is
not) plus FOCUS's per-request stats, then stops the server. `--model-path` serves another checkpoint of the suite.

The demo's batch is small (a few requests), below FOCUS's memory-bound guard (`min_batch_tokens`, 128 processed
block rows by default), where a server would not evict; the demo turns the guard off so that eviction shows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tokenizers import Tokenizer

from sglang_focus.training import tasks
from sglang_focus.bench.frontend import programs_collected_safely
from sglang_focus.bench.local_server import LocalServer, ServerStartError, serving_dtype
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT, block_size_of

RIGHT, WRONG = "✓", "✗"
DEMO_MIN_BATCH_TOKENS = 0  # evict at any batch size (see the module docstring)


def solve_with_frontend_program(base_url: str, problems: list[tasks.Problem],
                                max_tokens: int) -> list[tuple[str, dict]]:
    """(answer, FOCUS stats) per problem, from one `sgl.gen()` program run as a batch."""
    import sglang as sgl

    @sgl.function
    def solve(s, prompt):
        s += tasks.chat_prompt(prompt)  # the model's own chat template, as in training
        s += sgl.gen("answer", max_tokens=max_tokens)

    with programs_collected_safely():
        states = solve.run_batch([{"prompt": p.prompt} for p in problems], backend=sgl.RuntimeEndpoint(base_url))
        return [(state["answer"], _stats(state.get_meta_info("answer"))) for state in states]


def solve_with_openai_chat(base_url: str, problem: tasks.Problem, max_tokens: int) -> tuple[str, dict]:
    import openai

    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(model="default", max_tokens=max_tokens,
                                           messages=[{"role": "user", "content": problem.prompt}])
    return reply.choices[0].message.content, {}


def _stats(meta_info: dict | None) -> dict:
    return (meta_info or {}).get("focus_stats") or {}


def show(label: str, problem: tasks.Problem, answer: str, stats: dict) -> bool:
    ok = tasks.is_correct(problem, answer)
    print(f"[{label}] {problem.task}: {problem.prompt}")
    print(f"  {RIGHT if ok else WRONG} {tasks.extract_answer(answer)}")
    if not ok:
        print(f"    expected: {problem.answer}")
    if stats:
        print(f"    {stats['forwards']} forwards, {stats['tokens_per_forward']:.2f} tokens/forward, "
              f"{100 * stats['masked_kept_ratio']:.0f}% of masked rows kept past layer 1")
    return ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sglang_focus.bench.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT)
    parser.add_argument("--seed", default="demo", help="which held-out problems to ask")
    parser.add_argument("--log", type=Path, default=Path(".cache/demo-server.log"))
    args = parser.parse_args(argv)
    for name in ("config.json", "tokenizer.json"):
        if not (args.model_path / name).exists():
            parser.error(f"--model-path {args.model_path}: no {name} (expected a checkpoint trained on the tasks)")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    families = tasks.suite_of(args.model_path)
    problems = tasks.generate("heldout", len(families) + 1, seed=args.seed, tasks=families)
    tokenizer = Tokenizer.from_file(str(args.model_path / "tokenizer.json"))
    max_tokens = tasks.answer_token_budget(tokenizer, problems, block_size_of(args.model_path))

    config = Path(tempfile.mkdtemp(prefix="sglang-focus-demo-")) / "focus.yaml"
    config.write_text(f"min_batch_tokens: {DEMO_MIN_BATCH_TOKENS}\n")
    dtype = serving_dtype()
    print(f"Starting: python -m sglang.launch_server --model-path {args.model_path} --focus --focus-config {config}"
          f" --dtype {dtype}  (min_batch_tokens: {DEMO_MIN_BATCH_TOKENS}, so that this small batch evicts; log: "
          f"{args.log})", flush=True)
    started = time.monotonic()
    server_args = ["--focus", "--focus-config", str(config), "--max-running-requests", "8", "--dtype", dtype]
    try:
        server = LocalServer(args.model_path, server_args, log_path=args.log)
        server.start()
    except ServerStartError as err:
        sys.exit(f"demo: error: {err}")
    with server:
        print(f"Server ready at {server.base_url} after {time.monotonic() - started:.0f}s\n", flush=True)
        replies = solve_with_frontend_program(server.base_url, problems[:-1], max_tokens)
        results = [show("sgl.gen() program", p, *reply) for p, reply in zip(problems[:-1], replies)]
        results.append(show("OpenAI chat API", problems[-1],
                            *solve_with_openai_chat(server.base_url, problems[-1], max_tokens)))
    print(f"\n{sum(results)}/{len(results)} answers exactly right (held-out problems the model never trained on).")
    print("Server stopped.")


if __name__ == "__main__":
    main()
