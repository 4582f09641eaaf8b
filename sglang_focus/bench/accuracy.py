"""Accuracy of stock LowConfidence, the delayed cache alone and FOCUS at the same threshold, on held-out task
prompts, through real servers.

    python -m sglang_focus.bench.accuracy --model-path models/sdar-tasks [--n 500] [--threshold 0.8]
        [--arms stock delayed focus] [--budget-reset block|request] [--audit-every N] [--out DIR]

Each arm (`sglang_focus.bench.arms`: stock, delayed = FOCUS with eviction off, focus) is served in turn by
`python -m sglang.launch_server` (same threshold, dtype and scheduler limits) and answers the same held-out problems
of the task suite (`sglang_focus.training.tasks`), sent as token ids so every arm sees exactly the training
tokenisation. Prints one table (exact-match accuracy per task and overall, forwards per request, tokens decoded per
forward, block rows processed per forward, kept share of masked rows, evicted rows, output tokens per second and its
ratio to stock's) and, with `--out DIR`, writes `DIR/accuracy.json`: `records` (one object per arm: arm, accuracy,
n, threshold, alpha, budget_reset, per_task, ..., speedup over stock), `agreement` (per FOCUS arm, the share of
problems it answers exactly as stock), `answers` (every problem with each arm's answer) and `hardware`. The arms run
one after another, so their tokens/s share the machine's conditions less closely than in bench.throughput.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from sglang_focus.bench import arms, audit
from sglang_focus.bench.local_server import LocalServer, ServerStartError
from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT, block_size_of

def problem_payload(tokenizer: Tokenizer, problem: tasks.Problem, max_new_tokens: int) -> dict:
    prompt_ids, _ = tasks.encode_problem(tokenizer, problem)
    return {"input_ids": prompt_ids, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0}}


def completion_text(tokenizer: Tokenizer, reply: dict) -> str:
    """The reply's output ids decoded with special tokens kept (the checker cuts at the first end marker)."""
    return tokenizer.decode(reply["output_ids"], skip_special_tokens=False)


def score_arm(arm: str, problems: Sequence[tasks.Problem], completions: Sequence[str], replies: Sequence[dict], *,
              seconds: float, args: argparse.Namespace) -> dict:
    """One arm's record: accuracy overall and per task, decoding counters, throughput."""
    hits: dict[str, list[bool]] = {}
    for problem, text in zip(problems, completions):
        hits.setdefault(problem.task, []).append(tasks.is_correct(problem, text))
    correct = sum(sum(v) for v in hits.values())
    output_tokens = sum(r["meta_info"]["completion_tokens"] for r in replies)
    return {
        "arm": arm, "accuracy": correct / len(problems), "n": len(problems), "correct": correct,
        "threshold": args.threshold, "alpha": arms.arm_alpha(arm, args.alpha),
        "budget_reset": None if arm == "stock" else arms.resolved_focus_options(args)["budget_reset"],
        "per_task": {task: sum(v) / len(v) for task, v in hits.items()},
        **arms.decoding_fields(replies), **audit.audit_fields(replies), "output_tokens": output_tokens,
        "seconds": seconds,
        "output_tokens_per_s": output_tokens / seconds if seconds else None,
    }


def add_comparisons(records: Sequence[dict], completions: dict[str, list[str]]) -> dict[str, float]:
    """Set each record's `speedup` (output tokens/s over stock's; None without a stock record) and return, per
    FOCUS arm run next to stock, the share of problems it answers exactly as stock (empty without stock)."""
    stock = next((r for r in records if r["arm"] == "stock"), None)
    for r in records:
        r["speedup"] = (r["output_tokens_per_s"] / stock["output_tokens_per_s"]
                        if stock and stock["output_tokens_per_s"] and r["output_tokens_per_s"] else None)
    if "stock" not in completions:
        return {}
    return {arm: sum(a == b for a, b in zip(completions[arm], completions["stock"])) / len(completions["stock"])
            for arm in arms.FOCUS_ARMS if arm in completions}


def arm_server(arm: str, args: argparse.Namespace, cfg_dir: Path) -> LocalServer:
    """`arm`'s server (not started): its flags and environment from `arms`, its log in `--log-dir`."""
    server_args = arms.arm_server_args(arm, threshold=args.threshold, alpha=args.alpha, config_dir=cfg_dir,
                                       max_running=args.max_running, dtype=args.dtype,
                                       focus_options=audit.focus_options(arm, arms.focus_options(args), args))
    return LocalServer(args.model_path, server_args, env=arms.arm_server_env(arm),
                       log_path=args.log_dir / f"server-{arm}.log")


def run_arm(arm: str, args: argparse.Namespace, payloads: Sequence[dict], cfg_dir: Path) -> tuple[list[dict], float]:
    """Serve `arm`, answer every payload, stop the server; (replies, seconds spent answering)."""
    server = arm_server(arm, args, cfg_dir)
    print(f"[{arm}] starting the server (log: {server.log_path})", flush=True)
    with server:
        began = time.perf_counter()
        replies = arms.run_requests(server.base_url, payloads, concurrency=args.max_running, desc=arm)
        return replies, time.perf_counter() - began


def format_table(records: Sequence[dict], task_names: Sequence[str]) -> str:
    """Plain-text table, one row per arm: accuracy per task and overall (%), decoding counters, throughput."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    columns = ["arm", *task_names, "overall", "fwd/req", "tok/fwd", "rows/fwd", "kept", "evicted", "tok/s",
               "x stock"]
    rows = []
    for r in records:
        rows.append([r["arm"], *(f"{100 * r['per_task'].get(t, 0):.1f}" for t in task_names),
                     f"{100 * r['accuracy']:.1f}", f"{r['forwards_per_request']:.2f}",
                     fmt(r["tokens_per_forward"], ".2f"), fmt(r["rows_per_forward"], ".1f"),
                     fmt(r["masked_kept_ratio"], ".2f"), str(r["evicted"]), fmt(r["output_tokens_per_s"], ".1f"),
                     fmt(r.get("speedup"), ".2f")])
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def add_arm_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags `run_arm` reads (τ, α, the FOCUS arms' options, the audit, the scheduler limit, dtype, log
    directory); `resolve_dtype` completes them after parsing."""
    p.add_argument("--threshold", type=float, default=arms.DEFAULT_THRESHOLD, help="τ, the same for every arm")
    p.add_argument("--alpha", type=float, default=arms.DEFAULT_ALPHA, help="FOCUS budget factor α (focus arm)")
    arms.add_arm_flags(p)
    audit.add_audit_flag(p)
    p.add_argument("--max-running", type=int, default=32, help="--max-running-requests and client concurrency")
    p.add_argument("--dtype", default=None,
                   help="launch_server --dtype (every arm; default float32 on the CPU, auto on a GPU)")
    p.add_argument("--log-dir", type=Path, default=Path(".cache/bench-logs"), help="server logs")


def resolve_dtype(args: argparse.Namespace) -> None:
    """--dtype left out: the serving dtype of this machine (`local_server.serving_dtype`)."""
    if args.dtype is None:
        from sglang_focus.bench.local_server import serving_dtype

        args.dtype = serving_dtype()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sglang_focus.bench.accuracy", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT,
                   help="a checkpoint trained on a task suite (default: the embedded default)")
    p.add_argument("--n", type=int, default=500, help="held-out problems (cycling through the tasks)")
    p.add_argument("--seed", default="0", help="held-out sample seed")
    add_arm_run_flags(p)
    p.add_argument("--out", type=Path, default=None, help="write OUT/accuracy.json")
    args = p.parse_args(argv)
    resolve_dtype(args)
    if args.n < 1:
        p.error("--n must be at least 1")
    if not (args.model_path / "tokenizer.json").exists():
        p.error(f"--model-path {args.model_path}: no tokenizer.json (expected a checkpoint trained on the tasks)")
    args.arms = arms.chosen_arms(args)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(args.model_path / "tokenizer.json"))
    problems = tasks.generate("heldout", args.n, seed=args.seed, tasks=tasks.suite_of(args.model_path))
    max_new_tokens = tasks.answer_token_budget(tokenizer, problems, block_size_of(args.model_path))
    payloads = [problem_payload(tokenizer, p, max_new_tokens) for p in problems]
    cfg_dir, records, completions = arms.config_dir(), [], {}
    for arm in args.arms:
        try:
            replies, seconds = run_arm(arm, args, payloads, cfg_dir)
        except (ServerStartError, arms.BenchRequestError) as err:
            sys.exit(f"bench.accuracy: error: {arm} arm: {err}")
        completions[arm] = [completion_text(tokenizer, r) for r in replies]
        records.append(score_arm(arm, problems, completions[arm], replies, seconds=seconds, args=args))
    agreement = add_comparisons(records, completions)
    result = {"model": args.model_path.name, "seed": args.seed, "arms": args.arms, "threshold": args.threshold,
              "alpha": args.alpha, **arms.resolved_focus_options(args), "max_new_tokens": max_new_tokens,
              "max_running": args.max_running, "dtype": args.dtype, "audit_every": args.audit_every,
              "date": time.strftime("%Y-%m-%d"),
              "records": records, "agreement": agreement, "hardware": arms.hardware()}
    result["answers"] = [{"task": p.task, "prompt": p.prompt, "expected": p.answer,
                          **{arm: tasks.extract_answer(completions[arm][i]) for arm in completions}}
                         for i, p in enumerate(problems)]
    print(f"\n{args.model_path.name}: {args.n} held-out problems, threshold {args.threshold}, "
          f"alpha {args.alpha} (focus arm), min_batch_tokens {result['min_batch_tokens']}, "
          f"budget_reset {result['budget_reset']}, dtype {args.dtype}")
    print(format_table(records, list(dict.fromkeys(p.task for p in problems))))
    for arm, share in agreement.items():
        print(f"{arm}: answers identical to stock's for {100 * share:.1f}% of the problems")
    for line in filter(None, map(audit.format_audit, records)):
        print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out / 'accuracy.json'}")
    return result


if __name__ == "__main__":
    main()
