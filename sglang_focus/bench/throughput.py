"""Output throughput of stock LowConfidence, the delayed cache alone and FOCUS at the same threshold, per batch
size, in one run.

    python -m sglang_focus.bench.throughput [--model-path models/sdar-tasks] [--batch-sizes 1,8,32,64]
        [--prompts FILE] [--max-new-tokens N] [--repeats 3] [--arms stock delayed focus]
        [--budget-reset block|request] [--out DIR]

The arms (`sglang_focus.bench.arms`: stock, delayed = FOCUS with eviction off, focus) are served at once by
`python -m sglang.launch_server` (same threshold, dtype, KV pool and `--max-running-requests` = the largest batch
size; only the algorithm and FOCUS's options differ). For each batch size a "round" sends that many requests at once
and waits for all of them; each arm first runs one warm-up round (not counted), then every arm runs `--repeats`
rounds, the order rotating by one arm each repetition so that no arm always goes first or last. Prompts are held-out
problems of the task suite (so accuracy is reported too) unless `--prompts FILE` gives one prompt per line, sent
verbatim.

Reported per batch size and arm: output tokens/s and requests/s (total over the counted rounds / their wall time),
denoising forwards per request, tokens decoded per forward, block rows processed per forward, kept share of all
processed rows and of masked rows, evicted rows, accuracy (task prompts only), and for each FOCUS arm its speedup
over stock with the layer-count bound L / (2 + (L - 2) k) for its measured kept share k. Writes DIR/throughput.json
(`records`: one object per batch size and arm; `speedups`: one per batch size and FOCUS arm) and DIR/throughput.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from tokenizers import Tokenizer
from tqdm import tqdm

from sglang_focus.bench import arms, audit
from sglang_focus.bench.accuracy import completion_text, problem_payload
from sglang_focus.bench.forward import layer_bound
from sglang_focus.bench.local_server import LocalServer, ServerStartError, cuda_available, start_side_by_side
from sglang_focus.step_timing import read_snapshot, snapshot_difference
from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT, block_size_of

STEP_TIMES_ENV = "SGLANG_FOCUS_STEP_TIMES"
FILE_PROMPTS_MAX_NEW_TOKENS = 64  # --prompts without --max-new-tokens


class Workload(NamedTuple):
    payloads: list[dict]  # one /generate body per request of the largest batch
    problems: list[tasks.Problem] | None  # the task problems behind the payloads, when known
    max_new_tokens: int  # what every payload asks for


class Round(NamedTuple):
    seconds: float
    replies: list[dict]
    step_times: dict | None  # scheduler step timings accumulated during the round (sglang_focus.step_timing)


def task_workload(model_path: Path, n: int, max_new_tokens: int | None) -> Workload:
    """`n` held-out problems of the checkpoint's suite; `max_new_tokens` None: whole blocks enough for the longest
    answer among them (`tasks.answer_token_budget`)."""
    tokenizer = Tokenizer.from_file(str(model_path / "tokenizer.json"))
    problems = tasks.generate("heldout", n, seed="throughput", tasks=tasks.suite_of(model_path))
    if max_new_tokens is None:
        max_new_tokens = tasks.answer_token_budget(tokenizer, problems, block_size_of(model_path))
    return Workload([problem_payload(tokenizer, p, max_new_tokens) for p in problems], problems, max_new_tokens)


def file_workload(path: Path, n: int, max_new_tokens: int | None) -> Workload:
    max_new_tokens = FILE_PROMPTS_MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"bench.throughput: error: --prompts {path} holds no prompt")
    prompts = [lines[i % len(lines)] for i in range(n)]
    return Workload([{"text": p, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0}}
                     for p in prompts], None, max_new_tokens)


def run_round(server: LocalServer, payloads: Sequence[dict]) -> Round:
    """All `payloads` at once; wall time from the first send to the last reply."""
    timings = server.extra_env.get(STEP_TIMES_ENV)
    before = read_snapshot(timings) if timings else None
    began = time.perf_counter()
    replies = arms.run_requests(server.base_url, payloads, concurrency=len(payloads), desc="", quiet=True)
    seconds = time.perf_counter() - began
    return Round(seconds, replies, snapshot_difference(read_snapshot(timings), before) if timings else None)


def step_time_fields(rounds: Sequence[Round]) -> dict:
    """Mean wall time of one denoising step (forward + unmasking) and, for FOCUS, the selection's share of the
    model forward; None without step timings."""
    timed = [rnd.step_times for rnd in rounds if rnd.step_times is not None]
    steps = sum(t["steps"] for t in timed)
    if not steps:
        return {"mean_step_ms": None, "selection_share": None, "evictable_step_share": None}
    seconds = {name: sum(t["seconds"][name] for t in timed) for name in timed[0]["seconds"]}
    forward = seconds["model_forward"]
    return {"mean_step_ms": 1000 * seconds["step"] / steps,
            "selection_share": seconds["selection"] / forward if forward else None,
            "evictable_step_share": sum(t["evictable_steps"] for t in timed) / steps if forward else None}


def arm_record(arm: str, batch_size: int, rounds: Sequence[Round], workload: Workload, tokenizer: Tokenizer | None,
               args: argparse.Namespace) -> dict:
    """One batch size and arm: throughput over its counted rounds, decoding counters, accuracy, step timings."""
    replies = [r for rnd in rounds for r in rnd.replies]
    seconds = sum(rnd.seconds for rnd in rounds)
    output_tokens = sum(r["meta_info"]["completion_tokens"] for r in replies)
    record = {
        "batch_size": batch_size, "arm": arm, "threshold": args.threshold, "alpha": arms.arm_alpha(arm, args.alpha),
        "budget_reset": None if arm == "stock" else arms.resolved_focus_options(args)["budget_reset"],
        "rounds": len(rounds),
        "output_throughput": output_tokens / seconds, "request_throughput": len(replies) / seconds,
        "output_tokens": output_tokens, "seconds": seconds,
        **arms.decoding_fields(replies), **audit.audit_fields(replies),
        "accuracy": None,
        **step_time_fields(rounds),
    }
    if workload.problems is not None and tokenizer is not None:
        problems = workload.problems[:batch_size] * len(rounds)
        hits = [tasks.is_correct(p, completion_text(tokenizer, r)) for p, r in zip(problems, replies)]
        record["accuracy"] = sum(hits) / len(hits)
    return record


def rotated(order: Sequence[str], rep: int) -> list[str]:
    """`order` rotated left by `rep`: over len(order) repetitions every arm runs once in every position."""
    shift = rep % len(order)
    return [*order[shift:], *order[:shift]]


def measure(servers: dict[str, LocalServer], workload: Workload, batch_sizes: Sequence[int], repeats: int,
            tokenizer: Tokenizer | None, args: argparse.Namespace) -> list[dict]:
    """Warm-up and counted rounds of every batch size and arm (servers in report order); one record per cell."""
    records = []
    total = len(batch_sizes) * len(servers) * (repeats + 1)
    with tqdm(total=total, desc="rounds", unit="round", dynamic_ncols=True) as bar:
        for batch_size in batch_sizes:
            payloads = workload.payloads[:batch_size]
            for server in servers.values():  # warm-up, not counted
                run_round(server, payloads)
                bar.update()
            rounds: dict[str, list[Round]] = {arm: [] for arm in servers}
            for rep in range(repeats):
                for arm in rotated(list(servers), rep):
                    rounds[arm].append(run_round(servers[arm], payloads))
                    bar.set_postfix(batch=batch_size, arm=arm)
                    bar.update()
            records.extend(arm_record(arm, batch_size, rounds[arm], workload, tokenizer, args) for arm in servers)
    return records


def speedups(records: Sequence[dict], num_layers: int) -> list[dict]:
    """Per batch size and FOCUS arm measured next to stock: its output throughput over stock's, the layer bound of
    its kept share and the share of that bound reached (batch sizes without a stock record are left out)."""
    by_key = {(r["batch_size"], r["arm"]): r for r in records}
    rows = []
    for batch_size in sorted({r["batch_size"] for r in records}):
        stock = by_key.get((batch_size, "stock"))
        for arm in arms.FOCUS_ARMS:
            other = by_key.get((batch_size, arm))
            if not (stock and other):
                continue
            speedup = other["output_throughput"] / stock["output_throughput"]
            bound = layer_bound(num_layers, other["kept_ratio"]) if other["kept_ratio"] is not None else None
            rows.append({"batch_size": batch_size, "arm": arm, "speedup": speedup, "bound": bound,
                         "share_of_bound": speedup / bound if bound else None})
    return rows


def markdown_table(records: Sequence[dict], gains: Sequence[dict]) -> str:
    """One row per batch size and arm; the speedup columns are filled for the FOCUS arms."""
    fmt = lambda v, spec: "–" if v is None else format(v, spec)  # noqa: E731
    gain = {(g["batch_size"], g["arm"]): g for g in gains}
    lines = ["| batch | arm | output tok/s | forwards/req | tok/forward | rows/forward | kept (all / masked) "
             "| evicted | step ms | selection share | accuracy | × stock | bound L/(2+(L-2)k) | share of bound |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        g = gain.get((r["batch_size"], r["arm"]))
        lines.append(
            f"| {r['batch_size']} | {r['arm']} | {r['output_throughput']:.1f} "
            f"| {r['forwards_per_request']:.1f} | {fmt(r['tokens_per_forward'], '.2f')} "
            f"| {fmt(r['rows_per_forward'], '.1f')} "
            f"| {fmt(r['kept_ratio'], '.2f')} / {fmt(r['masked_kept_ratio'], '.2f')} | {r['evicted']} "
            f"| {fmt(r.get('mean_step_ms'), '.1f')} | {fmt(r.get('selection_share'), '.1%')} "
            f"| {fmt(None if r['accuracy'] is None else 100 * r['accuracy'], '.1f')} "
            f"| {fmt(g and g['speedup'], '.2f')} | {fmt(g and g['bound'], '.2f')} "
            f"| {fmt(g and g['share_of_bound'], '.0%')} |")
    return "\n".join(lines)


ARM_STYLES = {"stock": ("o-", "C0"), "delayed": ("^-", "C2"), "focus": ("s-", "C1")}


def save_plot(records: Sequence[dict], gains: Sequence[dict], path: Path, title: str) -> None:
    """Output tok/s per arm against batch size; on a second axis each FOCUS arm's speedup over stock (dashed) and
    its layer bound (dotted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for arm, (style, color) in ARM_STYLES.items():
        points = sorted((r["batch_size"], r["output_throughput"]) for r in records if r["arm"] == arm)
        if points:
            ax.plot(*zip(*points), style, color=color, label=f"{arm} output tok/s")
    import textwrap

    wrapped = "\n".join(textwrap.fill(line, 80) for line in title.splitlines())
    ax.set(xscale="log", xlabel="batch size (concurrent requests)", ylabel="output tokens / s")
    ax.set_title(wrapped, fontsize="medium")
    ax.set_xticks([r["batch_size"] for r in records], [str(r["batch_size"]) for r in records])
    if gains:
        twin = ax.twinx()
        for arm in arms.FOCUS_ARMS:
            mine = [g for g in gains if g["arm"] == arm]
            if not mine:
                continue
            color = ARM_STYLES[arm][1]
            twin.plot([g["batch_size"] for g in mine], [g["speedup"] for g in mine], "--", color=color,
                      label=f"{arm} / stock")
            bounded = [g for g in mine if g["bound"] is not None]
            twin.plot([g["batch_size"] for g in bounded], [g["bound"] for g in bounded], ":", color=color,
                      label=f"{arm} layer bound")
        twin.axhline(1.0, color="gray", linewidth=0.8, linestyle=":")
        twin.set_ylabel("speedup over stock")
        twin.legend(loc="lower right", fontsize="small")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sglang_focus.bench.throughput", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT)
    p.add_argument("--batch-sizes", default="1,8,32,64", help="comma-separated concurrent request counts")
    p.add_argument("--prompts", type=Path, default=None, help="one prompt per line (default: held-out task problems)")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: whole blocks enough for the longest answer of the held-out problems asked "
                        f"(with --prompts: {FILE_PROMPTS_MAX_NEW_TOKENS})")
    p.add_argument("--repeats", type=int, default=3, help="counted rounds per batch size and arm")
    p.add_argument("--threshold", type=float, default=arms.DEFAULT_THRESHOLD, help="τ, the same for every arm")
    p.add_argument("--alpha", type=float, default=arms.DEFAULT_ALPHA, help="FOCUS budget factor α (focus arm)")
    arms.add_arm_flags(p)
    audit.add_audit_flag(p)
    p.add_argument("--dtype", default=None,
                   help="launch_server --dtype (every arm; default float32 on the CPU, auto on a GPU)")
    p.add_argument("--out", type=Path, default=Path(".cache/bench-throughput"))
    p.add_argument("--log-dir", type=Path, default=Path(".cache/bench-logs"))
    p.add_argument("--step-times", action=argparse.BooleanOptionalAction, default=None,
                   help="time every denoising step in the servers (default: on without a GPU; on a GPU it "
                        "synchronises the device at each section, so it is off unless asked for)")
    args = p.parse_args(argv)
    if args.dtype is None:
        from sglang_focus.bench.local_server import serving_dtype

        args.dtype = serving_dtype()
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or args.batch_sizes[0] < 1:
        p.error("--batch-sizes must list positive integers")
    if args.repeats < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        p.error("--repeats and --max-new-tokens must be at least 1")
    if not (args.model_path / "config.json").exists():
        p.error(f"--model-path {args.model_path}: no config.json")
    if args.prompts is not None and not args.prompts.is_file():
        p.error(f"--prompts {args.prompts}: no such file")
    args.arms = arms.chosen_arms(args)
    return args


def start_servers(args: argparse.Namespace, max_new_tokens: int) -> dict[str, LocalServer]:
    """One server per chosen arm, in report order, started side by side, with a KV pool for the largest batch at
    `max_new_tokens`; exits with one line (every server stopped) if one fails to start."""
    cfg_dir, largest = arms.config_dir(), max(args.batch_sizes)
    timed = args.step_times if args.step_times is not None else not cuda_available()
    pool = str(max(8192, 2 * largest * (256 + max_new_tokens)))
    servers = {}
    for arm in args.arms:
        server_args = arms.arm_server_args(arm, threshold=args.threshold, alpha=args.alpha, config_dir=cfg_dir,
                                           max_running=largest, dtype=args.dtype, extra=["--max-total-tokens", pool],
                                           focus_options=audit.focus_options(arm, arms.focus_options(args), args))
        print(f"[{arm}] starting the server (log: {args.log_dir / f'throughput-{arm}.log'})", flush=True)
        env = arms.arm_server_env(arm)
        if timed:
            env[STEP_TIMES_ENV] = str((args.log_dir / f"step-times-{arm}.json").resolve())
            Path(env[STEP_TIMES_ENV]).unlink(missing_ok=True)
        servers[arm] = LocalServer(args.model_path, server_args, env=env,
                                   log_path=args.log_dir / f"throughput-{arm}.log")
    try:
        start_side_by_side(list(servers.values()))
    except ServerStartError as err:
        sys.exit(f"bench.throughput: error: {err}")
    return servers


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    largest = max(args.batch_sizes)
    is_tasks = args.prompts is None
    workload = (task_workload(args.model_path, largest, args.max_new_tokens) if is_tasks
                else file_workload(args.prompts, largest, args.max_new_tokens))
    tokenizer = Tokenizer.from_file(str(args.model_path / "tokenizer.json")) if is_tasks else None
    num_layers = json.loads((args.model_path / "config.json").read_text())["num_hidden_layers"]
    servers = start_servers(args, workload.max_new_tokens)
    try:
        records = measure(servers, workload, args.batch_sizes, args.repeats, tokenizer, args)
    except arms.BenchRequestError as err:
        sys.exit(f"bench.throughput: error: {err}")
    finally:
        for server in servers.values():
            server.stop()
    gains = speedups(records, num_layers)
    result = {"model": args.model_path.name, "num_layers": num_layers, "arms": args.arms, "threshold": args.threshold,
              "alpha": args.alpha, **arms.resolved_focus_options(args), "max_new_tokens": workload.max_new_tokens,
              "repeats": args.repeats, "dtype": args.dtype, "audit_every": args.audit_every,
              "prompts": str(args.prompts) if args.prompts else "heldout task problems",
              "date": time.strftime("%Y-%m-%d"), "records": records, "speedups": gains, "hardware": arms.hardware()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    setting = (f"{args.model_path.name}, τ = {args.threshold}, α = {args.alpha}, "
               f"min_batch_tokens = {result['min_batch_tokens']}, budget_reset = {result['budget_reset']}, "
               f"dtype {args.dtype}")
    device = result["hardware"]["device"]
    save_plot(records, gains, args.out / "throughput.png", f"{setting}\n{device}")
    print(f"\n{setting}, {device}; {args.repeats} counted rounds per cell, warm-up excluded\n")
    print(markdown_table(records, gains))
    for record in records:
        if line := audit.format_audit(record):
            print(f"batch {record['batch_size']}, {line}")
    print(f"\nwrote {args.out / 'throughput.json'} and {args.out / 'throughput.png'}")
    return result


if __name__ == "__main__":
    main()
