"""Opt-in wall-clock breakdown of denoising steps, for benchmarks (`SGLANG_FOCUS_STEP_TIMES=FILE`).

When the variable names a file, the scheduler process accumulates seconds per section and rewrites FILE after
every step as `{"steps": n, "evictable_steps": e, "seconds": {section: total}}`; readers diff two snapshots.
Sections: `step` (one FDFO round: forward and unmasking, both arms), and for FOCUS `plan` (host step plan),
`model_forward` (the model call) and `selection` (inside the forward: importance at layers 0 and 1, select and
enforce, compaction and attention re-plan). On a GPU each section boundary synchronises the device, so enable it
only to measure. Off (the default) every call is a no-op.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from sglang_focus import envs

SECTIONS = ("step", "plan", "model_forward", "selection")


class StepTimes:
    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self.seconds = dict.fromkeys(SECTIONS, 0.0)
        self.steps = 0
        self.evictable_steps = 0

    @property
    def enabled(self) -> bool:
        return self.path is not None

    @contextmanager
    def section(self, name: str):
        """Add the wall time of the `with` body to `name` (device work included)."""
        if not self.enabled:
            yield
            return
        _synchronize()
        began = time.perf_counter()
        try:
            yield
        finally:
            _synchronize()
            self.seconds[name] += time.perf_counter() - began

    def end_step(self, *, evictable: bool = False) -> None:
        """Count one finished step and rewrite the file (atomically: readers never see a partial one)."""
        if not self.enabled:
            return
        self.steps += 1
        self.evictable_steps += int(evictable)
        snapshot = {"steps": self.steps, "evictable_steps": self.evictable_steps, "seconds": self.seconds}
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(snapshot))
        os.replace(partial, self.path)


def _synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def read_snapshot(path: str | os.PathLike) -> dict:
    """The file's last snapshot, or zeros if no step has been written yet."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {"steps": 0, "evictable_steps": 0, "seconds": dict.fromkeys(SECTIONS, 0.0)}


def snapshot_difference(after: dict, before: dict) -> dict:
    """Steps and seconds accumulated between two snapshots."""
    return {"steps": after["steps"] - before["steps"],
            "evictable_steps": after["evictable_steps"] - before["evictable_steps"],
            "seconds": {name: after["seconds"][name] - before["seconds"][name] for name in SECTIONS}}


STEP_TIMES = StepTimes(envs.step_times_path())
