"""The two arms every comparison runs (stock LowConfidence and FOCUS at the same threshold) and a request driver.

`arm_server_args` is the single place that turns an arm into `launch_server` flags, so the accuracy and throughput
benchmarks cannot drift apart: both arms get the same threshold, the same scheduler limits and the same dtype; only
the algorithm (and FOCUS's alpha) differs. `run_requests` posts payloads concurrently to `/generate` and returns the
responses in payload order, with a progress bar.
"""

from __future__ import annotations

import platform
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Mapping, Sequence

import requests
import yaml
from tqdm import tqdm

from sglang_focus.config import FocusConfig

ARMS = ("stock", "focus")
DEFAULT_ALPHA = FocusConfig().alpha
DEFAULT_THRESHOLD = FocusConfig().threshold
DEFAULT_MIN_BATCH_TOKENS = FocusConfig().min_batch_tokens


def add_min_batch_tokens_flag(parser) -> None:
    """`--min-batch-tokens N`: the FOCUS memory-bound guard for the focus arm (default: FOCUS's own)."""
    parser.add_argument("--min-batch-tokens", type=_non_negative_int, default=None, metavar="N",
                        help="FOCUS skips eviction in steps processing fewer block rows than N; 0 = always evict "
                             f"(default: FOCUS's default, {DEFAULT_MIN_BATCH_TOKENS})")


def _non_negative_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def focus_options(args) -> dict:
    """The focus arm's extra YAML keys from the parsed flags."""
    return {} if args.min_batch_tokens is None else {"min_batch_tokens": args.min_batch_tokens}


class BenchRequestError(RuntimeError):
    pass


def arm_server_args(arm: str, *, threshold: float, alpha: float, config_dir: Path, max_running: int,
                    dtype: str = "auto", extra: Sequence[str] = (),
                    focus_options: Mapping[str, object] | None = None) -> list[str]:
    """launch_server flags for `arm`; writes the algorithm's YAML config into `config_dir`.

    `focus_options`: further FOCUS YAML keys (e.g. min_batch_tokens) for the focus arm only."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    common = ["--max-running-requests", str(max_running), "--dtype", dtype, *extra]
    if arm == "stock":
        cfg = _write_yaml(config_dir / "stock.yaml", {"threshold": threshold})
        return ["--dllm-algorithm", "LowConfidence", "--dllm-algorithm-config", cfg, *common]
    cfg = _write_yaml(config_dir / "focus.yaml", {"threshold": threshold, "alpha": alpha, **(focus_options or {})})
    return ["--focus", "--focus-config", cfg, *common]


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
    """tokens_per_forward, kept_ratio and masked_kept_ratio of summed counters (None where nothing was counted)."""
    from sglang_focus.stats import FocusStats

    s = FocusStats(**stats)
    return {"tokens_per_forward": s.tokens_per_forward if s.forwards else None,
            "kept_ratio": s.kept_ratio if s.processed else None,
            "masked_kept_ratio": s.masked_kept_ratio if s.masked else None}


def hardware() -> dict[str, str | int]:
    """What the numbers were measured on (the device of a GPU run, else the CPU)."""
    import os

    import torch

    info: dict[str, str | int] = {"platform": platform.platform(), "python": platform.python_version(),
                                  "torch": torch.__version__, "cpu_count": os.cpu_count() or 0}
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


__all__ = ["ARMS", "DEFAULT_ALPHA", "DEFAULT_THRESHOLD", "BenchRequestError", "arm_server_args", "config_dir",
           "hardware", "run_requests", "summed_stats"]
