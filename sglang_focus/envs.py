"""Typed environment knobs; the only module that reads or writes os.environ."""

from __future__ import annotations

import os
from typing import Mapping


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def is_cpu_engine() -> bool:
    """SGLang's own switch for running on the CPU (SGLANG_USE_CPU_ENGINE)."""
    return _flag("SGLANG_USE_CPU_ENGINE")


def step_times_path() -> str | None:
    """SGLANG_FOCUS_STEP_TIMES: file the scheduler keeps the denoising step timings in (off when unset)."""
    return os.environ.get("SGLANG_FOCUS_STEP_TIMES") or None


CHECK_TP_KEEP_ENV = "SGLANG_FOCUS_CHECK_TP_KEEP"


def check_tp_keep() -> bool:
    """SGLANG_FOCUS_CHECK_TP_KEEP: under attention TP > 1, compare the ranks' keep sets after every selection and
    raise RuntimeError when they differ (a debug check, off by default: one gather per evicting step)."""
    return _flag(CHECK_TP_KEEP_ENV)


def export(values: Mapping[str, str]) -> None:
    """Set `values` in this process's environment, which every process it starts afterwards inherits."""
    os.environ.update(values)


def logits_dump_dir() -> str | None:
    """SGLANG_FOCUS_DUMP_LOGITS: directory where every stock LowConfidence step of the scheduler writes its batch's
    ids, positions and full logits (a debug aid for checking a converted checkpoint; off when unset)."""
    return os.environ.get("SGLANG_FOCUS_DUMP_LOGITS") or None
