"""Where a denoising step's time goes on a real server, stock vs FOCUS, beside a `torch.matmul` roofline.

    python -m sglang_focus.bench.profile [--model-path M] [--batch-sizes 1,8,32] [--arms stock focus]
        [--max-new-tokens N] [--repeats 2] [--sampler auto|off] [--out DIR]

Each arm is served by `python -m sglang.launch_server` exactly as `bench.throughput` serves it (same threshold,
dtype, KV pool; step timings on). Per batch size and arm: one warm-up round, then `--repeats` rounds of that many
held-out task problems sent at once, during which

- the scheduler times every denoising step (`SGLANG_FOCUS_STEP_TIMES`), and the replies' FOCUS statistics give
  the block rows processed at layers 0-1 and the rows kept through layers 2..L and the LM head;
- `py-spy` (if installed; `--sampler off` skips it) samples the scheduler process at 100 Hz; each sample inside the
  model runner's step is put in one bucket by its innermost recognised frame (`BUCKETS`), and the bucket's share
  of those samples times the mean step time is its time per step.

The roofline: after the servers stop, this process times `torch.nn.functional.linear` (what SGLang's unquantised
linear layers call) on every GEMM shape of one step, with the rows each arm really ran through each layer (stock:
all rows everywhere; FOCUS: all rows at layer 0 and layer 1's QKV, the kept rows after that and in the LM head),
using the servers' thread count, each shape's fastest of 7 calls. `matmul share` = that roofline time / the measured step time, i.e. the step's
model GFLOP/s over the roofline's. Writes DIR/profile.json and DIR/profile.png (time per step against rows per
step, both arms, with the roofline line) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple, Sequence

import psutil
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sglang_focus.bench import arms, throughput
from sglang_focus.bench.local_server import LocalServer
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT

# (bucket, substrings of a py-spy frame "Class.function (short/path.py:line)"); the innermost frame that matches
# any decides. py-spy shortens file paths, so the needles are function names and file basenames.
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("KV write", ("set_kv_buffer",)),
    ("RoPE", ("RotaryEmbedding", "apply_rotary", "rotary_embedding")),
    ("RMSNorm", ("RMSNorm", "layernorm.py")),
    ("LM head", ("_compute_lm_head",)),
    ("GEMM (linear layers)", ("UnquantizedLinearMethod.apply", "unquant.py")),
    ("attention", ("AttnBackend", "radix_attention.py")),
    ("activation (SiLU·mul)", ("SiluAndMul", "activation.py")),
    ("FOCUS selection and plan", ("candidate_importance", "plan_retention", "retain.py", "_kept_rows_batch",
                                  "sub_batch.py", "replan_attention", "select_enforce", "plan_step", "importance")),
    ("unmasking (softmax over the vocabulary)", ("LowConfidence.step", "low_confidence.py", "unmask_kept_rows")),
    ("other model code", ("llada2.py", "logits_processor.py", "embedding")),
)
OTHER = "scheduler, batch building, Python"
STEP_FRAME = "run_batch"  # samples below this frame are a step's work; the rest is idle polling or I/O


class GemmShape(NamedTuple):
    name: str
    in_features: int
    out_features: int


def layer_gemms(cfg: dict) -> tuple[GemmShape, ...]:
    """One decoder layer's GEMMs as SGLang runs them (fused QKV and gate/up)."""
    hidden, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or hidden // heads
    inter = cfg["intermediate_size"]
    return (GemmShape("qkv", hidden, (heads + 2 * kv_heads) * head_dim),
            GemmShape("o", heads * head_dim, hidden),
            GemmShape("gate_up", hidden, 2 * inter),
            GemmShape("down", inter, hidden))


def step_flops(cfg: dict, rows: float, kept: float) -> float:
    """Model GEMM FLOPs of one step: layer 0 and layer 1's QKV on `rows`, everything after (layer 1's o and MLP,
    layers 2..L-1, the LM head over the vocabulary) on `kept` (= `rows` for stock)."""
    gemms, layers = layer_gemms(cfg), cfg["num_hidden_layers"]
    per_row = {g.name: 2 * g.in_features * g.out_features for g in gemms}
    full_layer = sum(per_row.values())
    lm_head = 2 * cfg["hidden_size"] * cfg["vocab_size"]
    on_rows = full_layer + per_row["qkv"]
    on_kept = (layers - 1) * full_layer - per_row["qkv"] + lm_head
    return rows * on_rows + kept * on_kept


@functools.lru_cache(maxsize=None)
def time_linear_ms(rows: int, in_features: int, out_features: int, *, repeats: int = 7) -> float:
    """Fastest of `repeats` F.linear([rows, in] x [out, in]^T) calls in float32 after a warm-up call: the roofline
    is the best this process's BLAS does on the shape."""
    x, w = torch.randn(rows, in_features), torch.randn(out_features, in_features)
    F.linear(x, w)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        F.linear(x, w)
        times.append(time.perf_counter() - began)
    return 1000 * min(times)


def roofline_step_ms(cfg: dict, rows: float, kept: float) -> float:
    """What the step's GEMMs (as in `step_flops`) take as bare F.linear calls in this process."""
    rows_i, kept_i = max(1, round(rows)), max(1, round(kept))
    gemm_ms = {g.name: (time_linear_ms(rows_i, g.in_features, g.out_features),
                        time_linear_ms(kept_i, g.in_features, g.out_features)) for g in layer_gemms(cfg)}
    full_on_kept = sum(kept_ms for _, kept_ms in gemm_ms.values())
    layer0 = sum(rows_ms for rows_ms, _ in gemm_ms.values())
    layer1 = gemm_ms["qkv"][0] + full_on_kept - gemm_ms["qkv"][1]
    lm_head = time_linear_ms(kept_i, cfg["hidden_size"], cfg["vocab_size"])
    return layer0 + layer1 + (cfg["num_hidden_layers"] - 2) * full_on_kept + lm_head


def bucket_of(stack: Sequence[str]) -> str:
    """The bucket of one sampled stack (outermost frame first)."""
    for frame in reversed(stack):
        for bucket, needles in BUCKETS:
            if any(n in frame for n in needles):
                return bucket
    return OTHER


def bucket_samples(collapsed: str) -> Counter:
    """Per-bucket sample counts of py-spy's raw (collapsed) output, counting only samples inside a step."""
    counts: Counter = Counter()
    for line in collapsed.splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not stack_text or not count.isdigit():
            continue
        stack = stack_text.split(";")
        if any(STEP_FRAME in frame for frame in stack):
            counts[bucket_of(stack)] += int(count)
    return counts


class Sampler:
    """py-spy recording one process until `stop()`; a no-op when py-spy is missing or disabled."""

    def __init__(self, pid: int | None, out: Path, enabled: bool):
        self.out, self.proc = out, None
        exe = shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy")
        if enabled and pid is not None and Path(exe).exists():
            self.proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                                          "--output", str(out), "--nonblocking"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)  # attached before the round starts

    def stop(self) -> Counter | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        return bucket_samples(self.out.read_text()) if self.out.exists() else None


def scheduler_pid(server: LocalServer) -> int | None:
    """The server's scheduler process (SGLang titles it `sglang::scheduler`)."""
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            if "scheduler" in " ".join(child.cmdline()) or "scheduler" in child.name():
                return child.pid
        except psutil.Error:
            continue
    return None


def profile_cell(server: LocalServer, arm: str, payloads: list[dict], args: argparse.Namespace) -> dict:
    """Warm-up, then `repeats` sampled rounds of `payloads`: step time, rows per step, the sampled buckets."""
    throughput.run_round(server, payloads)
    sampler = Sampler(scheduler_pid(server), args.log_dir / f"py-spy-{arm}-{len(payloads)}.txt",
                      args.sampler != "off")
    rounds = [throughput.run_round(server, payloads) for _ in range(args.repeats)]
    buckets = sampler.stop()
    replies = [r for rnd in rounds for r in rnd.replies]
    stats = arms.summed_stats(replies)
    steps = sum(rnd.step_times["steps"] for rnd in rounds)
    step_ms = 1000 * sum(rnd.step_times["seconds"]["step"] for rnd in rounds) / steps
    return {"arm": arm, "batch_size": len(payloads), "steps": steps, "step_ms": step_ms,
            "rows_per_step": stats["processed"] / steps, "kept_rows_per_step": stats["kept"] / steps,
            "tokens_per_forward": arms.stat_ratios(stats)["tokens_per_forward"],
            "samples": dict(buckets) if buckets else None}


def with_roofline(record: dict, cfg: dict) -> dict:
    flops = step_flops(cfg, record["rows_per_step"], record["kept_rows_per_step"])
    roof_ms = roofline_step_ms(cfg, record["rows_per_step"], record["kept_rows_per_step"])
    split = None
    if record["samples"]:
        total = sum(record["samples"].values())
        split = {bucket: record["step_ms"] * n / total for bucket, n in sorted(record["samples"].items(),
                                                                                 key=lambda kv: -kv[1])}
    return {**record, "model_gflop_per_step": flops / 1e9, "roofline_ms": roof_ms,
            "model_gflops": flops / record["step_ms"] / 1e6, "roofline_gflops": flops / roof_ms / 1e6,
            "matmul_share": roof_ms / record["step_ms"], "split_ms": split}


def markdown_tables(records: Sequence[dict]) -> str:
    lines = ["| batch | arm | rows/step (layers 0-1 / kept) | step ms | roofline ms | model GFLOP/s | "
             "roofline GFLOP/s | matmul share |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['batch_size']} | {r['arm']} | {r['rows_per_step']:.0f} / {r['kept_rows_per_step']:.0f} "
                     f"| {r['step_ms']:.1f} | {r['roofline_ms']:.1f} | {r['model_gflops']:.1f} "
                     f"| {r['roofline_gflops']:.1f} | {r['matmul_share']:.0%} |")
    split = [r for r in records if r["split_ms"]]
    if split:
        buckets = [b for b, _ in BUCKETS] + [OTHER]
        lines += ["", "ms per step (py-spy shares × step time):", "",
                  "| where | " + " | ".join(f"{r['arm']} b{r['batch_size']}" for r in split) + " |",
                  "|---|" + "---|" * len(split)]
        for bucket in buckets:
            cells = [r["split_ms"].get(bucket) for r in split]
            if any(cells):
                lines.append(f"| {bucket} | " + " | ".join("–" if c is None else f"{c:.1f}" for c in cells) + " |")
    return "\n".join(lines)


def save_plot(records: Sequence[dict], path: Path, title: str) -> None:
    """Step ms against rows per step (FOCUS: its kept rows), per arm, with the roofline ms of each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, (style, color) in throughput.ARM_STYLES.items():
        mine = sorted((r for r in records if r["arm"] == arm), key=lambda r: r["kept_rows_per_step"])
        if not mine:
            continue
        x = [r["kept_rows_per_step"] for r in mine]
        ax.plot(x, [r["step_ms"] for r in mine], style, color=color, label=f"{arm}: measured step")
        ax.plot(x, [r["roofline_ms"] for r in mine], ":", marker="x", color=color, label=f"{arm}: GEMM roofline")
        for r in mine:
            ax.annotate(f"b{r['batch_size']}", (r["kept_rows_per_step"], r["step_ms"]), fontsize="small",
                        textcoords="offset points", xytext=(4, 4))
    ax.set(xlabel="rows per step through layers 2..L and the LM head", ylabel="ms per denoising step", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sglang_focus.bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT)
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="default: whole blocks enough for the longest answer of the problems asked")
    p.add_argument("--repeats", type=int, default=2, help="sampled rounds per batch size and arm")
    p.add_argument("--threshold", type=float, default=arms.DEFAULT_THRESHOLD)
    p.add_argument("--alpha", type=float, default=arms.DEFAULT_ALPHA)
    arms.add_arm_flags(p)
    p.add_argument("--dtype", default=None, help="launch_server --dtype (default float32 on the CPU, auto on a GPU)")
    p.add_argument("--sampler", choices=("auto", "off"), default="auto",
                   help="sample the scheduler with py-spy when it is installed (auto) or never")
    p.add_argument("--out", type=Path, default=Path(".cache/bench-profile"))
    p.add_argument("--log-dir", type=Path, default=Path(".cache/bench-logs"))
    args = p.parse_args(argv)
    if args.dtype is None:
        from sglang_focus.bench.local_server import serving_dtype

        args.dtype = serving_dtype()
    try:
        args.batch_sizes = sorted({int(b) for b in args.batch_sizes.split(",") if b.strip()})
    except ValueError:
        p.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
    if not args.batch_sizes or args.batch_sizes[0] < 1 or args.repeats < 1:
        p.error("--batch-sizes must list positive integers and --repeats be at least 1")
    if not (args.model_path / "config.json").exists():
        p.error(f"--model-path {args.model_path}: no config.json")
    args.arms = arms.chosen_arms(args)
    args.step_times, args.audit_every = True, 0
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((args.model_path / "config.json").read_text())
    workload = throughput.task_workload(args.model_path, max(args.batch_sizes), args.max_new_tokens)
    servers = throughput.start_servers(args, workload.max_new_tokens)
    cells = []
    try:
        with tqdm(total=len(args.batch_sizes) * len(servers), desc="profile", unit="cell") as bar:
            for batch_size in args.batch_sizes:
                for arm, server in servers.items():
                    cells.append(profile_cell(server, arm, workload.payloads[:batch_size], args))
                    bar.update()
    except arms.BenchRequestError as err:
        sys.exit(f"bench.profile: error: {err}")
    finally:
        for server in servers.values():
            server.stop()
    records = [with_roofline(cell, cfg) for cell in tqdm(cells, desc="roofline", unit="cell")]
    hardware = arms.hardware()
    result = {"model": args.model_path.name, "threshold": args.threshold, "alpha": args.alpha,
              **arms.resolved_focus_options(args), "dtype": args.dtype, "max_new_tokens": workload.max_new_tokens,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"),
              "hardware": hardware, "records": records}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    title = f"{args.model_path.name}, τ = {args.threshold}, dtype {args.dtype}\n{hardware['device']}"
    save_plot(records, args.out / "profile.png", title)
    print(f"\n{title.replace(chr(10), ', ')}; {args.repeats} sampled rounds per cell, warm-up excluded\n")
    print(markdown_tables(records))
    print(f"\nwrote {args.out / 'profile.json'} and {args.out / 'profile.png'}")
    return result


if __name__ == "__main__":
    main()
