"""Triton FOCUS kernels against their PyTorch references, per batch size, after checking that they agree.

    python -m sglang_focus.bench.kernels [--batch-sizes 32,64,128,256] [--block-size 32] [--num-heads 32]
        [--num-kv-heads 8] [--head-dim 128] [--repeats 20] [--warmup 5] [--device cuda|cpu] [--cpu-threads N]
        [--out DIR]

Three implementations are timed: the per-request loop references (``backend="reference"``, the specification),
the vectorised PyTorch path (``"torch"``, what the CPU runs) and Triton. Every request of a batch has a full
block of masked candidates (``m = block size``), fp32 q/k and tie-free random
deltas. Before a batch is timed the two backends must agree on it: importance within rtol = atol = 1e-4, keep
masks exactly; a disagreement stops the run there, so no speedup is reported. Timing: median over ``--repeats``
after ``--warmup`` calls, CUDA events on a GPU, ``time.perf_counter`` on CPU. Without a CUDA device only the references
are timed (the Triton kernels need a GPU to be timed meaningfully). Prints a markdown table and writes
DIR/kernels.json.

Imports only torch, tqdm and ``sglang_focus.kernels`` (never SGLang), so it runs on a machine with torch and Triton
alone. The timing and environment helpers here are shared with ``sglang_focus.bench.forward``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, NamedTuple, Sequence

import torch
from tqdm import tqdm

KERNELS_SOURCE = Path(__file__).resolve().parents[2] / "kernels"
NO_CUDA_LINE = "no CUDA device: timing the PyTorch references only"
IMPORTANCE_TOLERANCE = 1e-4  # rtol and atol of the fp32 importance comparison


def import_kernels() -> ModuleType:
    """``sglang_focus.kernels``, installed or, in an uninstalled checkout, loaded from the top-level ``kernels/``.

    The package-dir mapping (``kernels/`` → ``sglang_focus.kernels``) exists only after ``pip install``; with a bare
    ``PYTHONPATH=<checkout>`` the same directory is registered under the installed name, so its relative imports work.
    """
    try:
        return importlib.import_module("sglang_focus.kernels")
    except ModuleNotFoundError as error:
        if error.name != "sglang_focus.kernels":
            raise
    spec = importlib.util.spec_from_file_location(
        "sglang_focus.kernels", KERNELS_SOURCE / "__init__.py", submodule_search_locations=[str(KERNELS_SOURCE)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["sglang_focus.kernels"] = module
    spec.loader.exec_module(module)
    return module


def median_ms(fn: Callable[[], object], *, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    return statistics.median(_one_call_ms(fn, device) for _ in range(repeats))


def _one_call_ms(fn: Callable[[], object], device: torch.device) -> float:
    if device.type != "cuda":
        began = time.perf_counter()
        fn()
        return (time.perf_counter() - began) * 1e3
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def environment(device: torch.device) -> dict:
    """Hardware and software versions for a benchmark report."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "hardware": hardware,
        "device": str(device),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def int_list(text: str) -> list[int]:
    """argparse type: comma-separated positive integers."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def positive_int(text: str) -> int:
    value = int_list(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return value[0]


def add_cpu_threads_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cpu-threads", type=positive_int, default=None,
                        help="torch intra-op threads (default: torch's); 1 avoids OpenMP stalls on a busy machine")


def apply_cpu_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def resolve_device(parser: argparse.ArgumentParser, name: str | None) -> torch.device:
    """``--device``: CUDA when available unless given; a CUDA request without a device is a usage error."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device {name!r}: not a torch device (try cuda, cuda:1 or cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: no CUDA device is available")
    if device.type not in ("cuda", "cpu"):
        parser.error(f"--device {name}: only cuda and cpu are supported")
    return device


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


class KernelShape(NamedTuple):
    block_size: int  # candidates per request (every row of the block is masked)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    target: int  # select + enforce keep target of every request


class KernelInputs(NamedTuple):
    q: torch.Tensor  # [R * block, H, d] fp32
    k: torch.Tensor  # [R * block, H_kv, d] fp32
    delta: torch.Tensor  # [R * block] fp32, tie-free
    positions: torch.Tensor  # [R * block] int32, 0..block-1 per request
    cu_seqlens: torch.Tensor  # [R + 1] int32
    target: torch.Tensor  # [R] int32
    evict: torch.Tensor  # [R] bool, all true
    progress: torch.Tensor  # [R] int32 in [-1, block)


def random_inputs(shape: KernelShape, batch_size: int, device: torch.device, seed: int) -> KernelInputs:
    gen = torch.Generator().manual_seed(seed)
    total = batch_size * shape.block_size
    tensors = KernelInputs(
        q=torch.randn(total, shape.num_heads, shape.head_dim, generator=gen),
        k=torch.randn(total, shape.num_kv_heads, shape.head_dim, generator=gen),
        delta=torch.randn(total, generator=gen),  # continuous: ties have probability zero
        positions=torch.arange(shape.block_size, dtype=torch.int32).repeat(batch_size),
        cu_seqlens=torch.arange(0, total + 1, shape.block_size, dtype=torch.int32),
        target=torch.full((batch_size,), shape.target, dtype=torch.int32),
        evict=torch.ones(batch_size, dtype=torch.bool),
        progress=torch.randint(-1, shape.block_size, (batch_size,), generator=gen, dtype=torch.int32),
    )
    return KernelInputs(*(t.to(device) for t in tensors))


def kernel_calls(kernels: ModuleType, inputs: KernelInputs, shape: KernelShape) -> dict[str, Callable]:
    """Per kernel name, ``backend -> output`` for these inputs."""
    sm_scale = shape.head_dim**-0.5
    max_m = shape.block_size

    def importance(backend: str) -> torch.Tensor:
        return kernels.importance(inputs.q, inputs.k, inputs.cu_seqlens, sm_scale=sm_scale, max_m=max_m,
                                  backend=backend)

    def select_enforce(backend: str) -> torch.Tensor:
        return kernels.select_enforce(inputs.delta, inputs.positions, inputs.cu_seqlens, inputs.target,
                                      inputs.evict, inputs.progress, max_m=max_m, backend=backend)

    return {"importance": importance, "select_enforce": select_enforce}


def check_agreement(name: str, call: Callable[[str], torch.Tensor], batch_size: int) -> None:
    """Raise ``SystemExit`` unless the Triton output equals the reference (importance: within 1e-4)."""
    reference, triton_out = call("reference"), call("triton")
    try:
        if name == "importance":
            torch.testing.assert_close(triton_out, reference, rtol=IMPORTANCE_TOLERANCE, atol=IMPORTANCE_TOLERANCE)
        elif not torch.equal(triton_out, reference):
            raise AssertionError(f"{int((triton_out != reference).sum())} keep flags differ")
    except AssertionError as error:
        raise SystemExit(f"bench.kernels: {name} at batch {batch_size}: Triton disagrees with the reference, "
                         f"no speedup reported\n{error}") from None


def bench_batch(kernels: ModuleType, shape: KernelShape, batch_size: int, args: argparse.Namespace,
                device: torch.device, *, with_triton: bool) -> list[dict]:
    calls = kernel_calls(kernels, random_inputs(shape, batch_size, device, args.seed), shape)
    if with_triton:
        for name, call in calls.items():
            check_agreement(name, call, batch_size)
    records = []
    for name, call in calls.items():
        timing = dict(device=device, repeats=args.repeats, warmup=args.warmup)
        reference_ms = median_ms(lambda: call("reference"), **timing)
        batched_ms = median_ms(lambda: call("torch"), **timing)
        triton_ms = median_ms(lambda: call("triton"), **timing) if with_triton else None
        records.append({
            "kernel": name,
            "batch_size": batch_size,
            "reference_ms": reference_ms,  # the per-request loops of kernels/reference.py (the specification)
            "batched_ms": batched_ms,  # the vectorised PyTorch path (kernels/batched.py, the CPU runtime)
            "triton_ms": triton_ms,
            "speedup": reference_ms / triton_ms if triton_ms else None,
            "speedup_vs_batched": batched_ms / triton_ms if triton_ms else None,
        })
    return records


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sglang_focus.bench.kernels", description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int_list, default=[32, 64, 128, 256], help="requests per batch")
    parser.add_argument("--block-size", type=positive_int, default=32, help="candidates per request (<= 128)")
    parser.add_argument("--num-heads", type=positive_int, default=32)
    parser.add_argument("--num-kv-heads", type=positive_int, default=8)
    parser.add_argument("--head-dim", type=positive_int, default=128)
    parser.add_argument("--target", type=positive_int, default=2, help="select + enforce keep target per request")
    parser.add_argument("--repeats", type=positive_int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    add_cpu_threads_flag(parser)
    parser.add_argument("--out", type=Path, default=None, help="directory for kernels.json")
    return parser


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, KernelShape, torch.device]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.block_size > 128:
        parser.error(f"--block-size {args.block_size}: the kernels accept at most 128 candidates per request")
    if args.num_heads % args.num_kv_heads:
        parser.error(f"--num-heads {args.num_heads} must be a multiple of --num-kv-heads {args.num_kv_heads}")
    if args.warmup < 0:
        parser.error("--warmup must be >= 0")
    shape = KernelShape(args.block_size, args.num_heads, args.num_kv_heads, args.head_dim,
                        target=min(args.target, args.block_size))
    return args, shape, resolve_device(parser, args.device)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; returns the report that is also written to DIR/kernels.json."""
    args, shape, device = parse_args(argv)
    apply_cpu_threads(args.cpu_threads)
    with_triton = device.type == "cuda"
    if not with_triton:
        print(NO_CUDA_LINE, flush=True)
    kernels = import_kernels()
    records = []
    for batch_size in tqdm(args.batch_sizes, desc="kernels", unit="batch"):
        records += bench_batch(kernels, shape, batch_size, args, device, with_triton=with_triton)
    report = {**environment(device), "triton_timed": with_triton, "shape": shape._asdict(),
              "dtype": "float32", "repeats": args.repeats, "warmup": args.warmup, "records": records}
    print(format_report(report))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "kernels.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_report(report: dict) -> str:
    header = ["kernel", "batch", "reference ms (loop)", "batched torch ms", "triton ms", "speedup vs reference",
              "speedup vs batched"]
    rows = [[r["kernel"], r["batch_size"], r["reference_ms"], r["batched_ms"], r["triton_ms"], r["speedup"],
             r["speedup_vs_batched"]] for r in report["records"]]
    title = f"{report['hardware']}, torch {report['torch']}, triton {report['triton']}, shape {report['shape']}"
    return f"{title}\n\n{markdown_table(header, rows)}"


if __name__ == "__main__":
    main()
