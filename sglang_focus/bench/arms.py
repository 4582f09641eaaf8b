"""The arms every comparison runs, all at the same threshold, and a request driver.

- `stock`: SGLang's LowConfidence;
- `delayed`: FOCUS with eviction off (alpha = inf) and the delayed cache on, otherwise configured as the focus arm
  (same memory-bound guard, same budget_reset): what the delayed cache alone costs or saves;
- `focus`: FOCUS as configured (alpha, delayed cache, eviction).

`arm_server_args` and `arm_server_env` are the single place that turns an arm into `launch_server` flags and
environment, so the accuracy and throughput benchmarks cannot drift apart: every arm gets the same threshold, the
same scheduler limits, the same dtype and the same attention path (FlashInfer planned paged, as every FOCUS server
plans it); only the algorithm and FOCUS's options differ. `run_requests` posts payloads concurrently to `/generate` and returns the
responses in payload order, with a progress bar; `decoding_fields` turns the replies' `focus_stats` into the
per-arm fields both benchmarks report.
"""

from __future__ import annotations

import math
import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Mapping, Sequence

import requests
import yaml
from tqdm import tqdm

from sglang_focus.config import BUDGET_RESETS, FocusConfig

ARMS = ("stock", "delayed", "focus")
FOCUS_ARMS = ("delayed", "focus")  # the arms served by FOCUS, each compared against stock
DEFAULT_ALPHA = FocusConfig().alpha
DEFAULT_THRESHOLD = FocusConfig().threshold
DEFAULT_MIN_BATCH_TOKENS = FocusConfig().min_batch_tokens
DEFAULT_BUDGET_RESET = FocusConfig().budget_reset


def add_arm_flags(parser) -> None:
    """`--arms`, and the FOCUS options both FOCUS arms share: `--min-batch-tokens N`, `--budget-reset MODE`
    (defaults: every arm; FOCUS's own defaults)."""
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS),
                        help="arms to run (default: all; always reported in the order stock, delayed, focus)")
    parser.add_argument("--min-batch-tokens", type=non_negative_int, default=None, metavar="N",
                        help="FOCUS skips eviction and the delayed cache in steps processing fewer block rows than "
                             f"N; 0 = never (default: FOCUS's default, {DEFAULT_MIN_BATCH_TOKENS})")
    parser.add_argument("--budget-reset", choices=BUDGET_RESETS, default=None,
                        help="when FOCUS's budget counters restart: every block, or once per request "
                             f"(default: FOCUS's default, {DEFAULT_BUDGET_RESET})")


def chosen_arms(args) -> list[str]:
    """The parsed `--arms` without repeats, in the canonical order of ARMS."""
    return [arm for arm in ARMS if arm in args.arms]


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def focus_options(args) -> dict:
    """The FOCUS arms' extra YAML keys from the parsed flags (only those given)."""
    given = {"min_batch_tokens": args.min_batch_tokens, "budget_reset": args.budget_reset}
    return {key: value for key, value in given.items() if value is not None}


def resolved_focus_options(args) -> dict:
    """min_batch_tokens and budget_reset as the FOCUS arms run them (the flags, else FOCUS's defaults)."""
    return {"min_batch_tokens": DEFAULT_MIN_BATCH_TOKENS, "budget_reset": DEFAULT_BUDGET_RESET,
            **focus_options(args)}


class BenchRequestError(RuntimeError):
    pass


def arm_server_args(arm: str, *, threshold: float, alpha: float, config_dir: Path, max_running: int,
                    dtype: str | None = None, extra: Sequence[str] = (),
                    focus_options: Mapping[str, object] | None = None) -> list[str]:
    """launch_server flags for `arm`; writes the algorithm's YAML config into `config_dir` (`<arm>.yaml`).

    `focus_options`: further FOCUS YAML keys (e.g. min_batch_tokens, budget_reset) for both FOCUS arms. `dtype`
    defaults to `local_server.serving_dtype()` (float32 on the CPU)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    from sglang_focus.bench.local_server import serving_dtype

    common = ["--max-running-requests", str(max_running), "--dtype", dtype or serving_dtype(), *extra]
    if arm == "stock":
        cfg = _write_yaml(config_dir / "stock.yaml", {"threshold": threshold})
        return ["--dllm-algorithm", "LowConfidence", "--dllm-algorithm-config", cfg, *common]
    options = focus_yaml(arm, threshold=threshold, alpha=alpha, focus_options=focus_options)
    return ["--focus", "--focus-config", _write_yaml(config_dir / f"{arm}.yaml", options), *common]


def arm_server_env(arm: str) -> dict[str, str]:
    """Environment added to `arm`'s server: the same for every arm. FOCUS servers plan FlashInfer extend batches
    paged (exported at their launch); the stock arm is started with that switch too, so that both arms compare on
    one attention path rather than paged against ragged + merged prefix."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    from sglang_focus.compat import attention_path_env

    return attention_path_env()


def focus_yaml(arm: str, *, threshold: float, alpha: float,
               focus_options: Mapping[str, object] | None = None) -> dict:
    """The FOCUS YAML of a FOCUS arm: `focus` evicts with `alpha`; `delayed` is the same configuration with alpha
    inf (no request ever evicts) and the delayed cache on, so it differs from stock only by the delayed cache."""
    if arm not in FOCUS_ARMS:
        raise ValueError(f"a FOCUS arm is one of {FOCUS_ARMS}, got {arm!r}")
    options = {"threshold": threshold, "alpha": alpha, **(focus_options or {})}
    if arm == "delayed":
        options.update(alpha=math.inf, delayed_cache=True)
    return options


def arm_alpha(arm: str, alpha: float) -> float | str | None:
    """The alpha an arm decodes with, for JSON records: None for stock, "inf" (JSON has no infinity) when eviction
    is off."""
    if arm == "stock":
        return None
    value = math.inf if arm == "delayed" else alpha
    return "inf" if math.isinf(value) else value


def _write_yaml(path: Path, mapping: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping))
    return str(path)


def config_dir() -> Path:
    """A fresh directory for the arms' YAML files (removed with the process's temp files)."""
    return Path(tempfile.mkdtemp(prefix="sglang-focus-arms-"))


def run_requests(base_url: str, payloads: Sequence[dict], *, concurrency: int, desc: str,
                 timeout: float = 600.0, quiet: bool = False) -> list[dict]:
    """POST each payload to `/generate` with up to `concurrency` in flight; the JSON replies in payload order
    (`quiet`: no progress bar).

    Raises BenchRequestError naming the first payload whose reply was not HTTP 200.
    """
    def post(index: int) -> tuple[int, dict]:
        resp = requests.post(f"{base_url}/generate", json=payloads[index], timeout=timeout)
        if resp.status_code != 200:
            raise BenchRequestError(f"request {index} failed with HTTP {resp.status_code}: {resp.text[:300]}")
        return index, resp.json()

    replies: list[dict | None] = [None] * len(payloads)
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, \
            tqdm(total=len(payloads), desc=desc, unit="req", dynamic_ncols=True, disable=quiet) as bar:
        for future in as_completed([pool.submit(post, i) for i in range(len(payloads))]):
            index, reply = future.result()
            replies[index] = reply
            bar.update()
    return replies


def summed_stats(replies: Sequence[dict]) -> dict[str, int]:
    """The per-request `meta_info["focus_stats"]` counters summed over `replies` (zeros where absent)."""
    from sglang_focus.stats import COUNT_FIELDS

    total = dict.fromkeys(COUNT_FIELDS, 0)
    for reply in replies:
        stats = reply["meta_info"].get("focus_stats")
        if stats:
            for field in COUNT_FIELDS:
                total[field] += int(stats[field])
    return total


def stat_ratios(stats: dict[str, int]) -> dict[str, float | None]:
    """tokens_per_forward, rows_per_forward (block rows processed at layers 0-1 per request-forward), kept_ratio
    and masked_kept_ratio of summed counters (None where nothing was counted)."""
    from sglang_focus.stats import FocusStats

    s = FocusStats(**stats)
    return {"tokens_per_forward": s.tokens_per_forward if s.forwards else None,
            "rows_per_forward": s.processed / s.forwards if s.forwards else None,
            "kept_ratio": s.kept_ratio if s.processed else None,
            "masked_kept_ratio": s.masked_kept_ratio if s.masked else None}


def decoding_fields(replies: Sequence[dict]) -> dict[str, float | int | None]:
    """What an arm's decoding did over `replies` (at least one): total forwards and evicted rows,
    forwards_per_request and the `stat_ratios`."""
    stats = summed_stats(replies)
    return {"forwards": stats["forwards"], "forwards_per_request": stats["forwards"] / len(replies),
            "evicted": stats["evicted"], **stat_ratios(stats)}


def hardware() -> dict[str, str | int]:
    """What the numbers were measured on (the device of a GPU run, else the CPU). `torch_threads` is this process's
    intra-op thread count, which the servers it starts inherit through the environment (OMP_NUM_THREADS)."""
    import os

    import torch

    info: dict[str, str | int] = {"platform": platform.platform(), "python": platform.python_version(),
                                  "torch": torch.__version__, "cpu_count": os.cpu_count() or 0,
                                  "torch_threads": torch.get_num_threads()}
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else _cpu_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


__all__ = ["ARMS", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "FOCUS_ARMS", "BenchRequestError", "arm_alpha",
           "arm_server_args", "arm_server_env", "config_dir", "decoding_fields", "hardware", "run_requests", "summed_stats"]
