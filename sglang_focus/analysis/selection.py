"""How well does FOCUS's selection keep the tokens a step decodes? Replayed on the stock decoding trajectory.

At every denoising step recorded by the decodability study (stock LowConfidence, nothing evicted), this runs
FOCUS's real selection on that step's importance deltas: the budget from the request's running average (spec §4.5;
reset per block, or carried over the request with `budget_reset="request"`), the 1σ rule, the left neighbour and
the gap fill against the progress FOCUS itself would have reached, through the package's kernels. It scores the
kept set against the tokens the stock rule decoded at that step:

* decodable recall: of the tokens decoded at this step, the share the selector keeps;
* wrong evictions: decoded tokens the selector evicts (per step, and the share of steps with at least one);
* kept share: kept candidates over masked candidates.

Two baselines get the same kept count per step as FOCUS: `random` (a seeded uniform subset) and `leftmost` (the
leftmost candidates, a positional rule). `oracle` keeps exactly the decoded tokens (recall 1.0 by definition).
"""

from __future__ import annotations

import math
import random
from typing import Iterable, NamedTuple, Sequence

import torch

from sglang_focus import kernels

SELECTORS = ("focus", "random", "leftmost", "oracle")
BUDGET_RESETS = ("block", "request")


class StepRecord(NamedTuple):
    """One denoising step of one request on the stock trajectory."""

    request: int
    task: str
    block: int  # absolute position of the block's first token
    block_step: int  # denoising step within the block (0-based)
    prefill: bool  # the block's first step while it still holds prompt tokens (FOCUS never evicts there)
    positions: list[int]  # masked candidates' block positions, ascending
    delta: list[float]  # their importance deltas I1 - I0
    decoded: list[bool]  # the stock rule decoded them at this step


class StepSelection(NamedTuple):
    """What each selector keeps at one step, as keep flags over the step's candidates."""

    step: StepRecord
    target: int  # FOCUS's budget target (spec §4.5)
    evicts: bool  # FOCUS's eviction flag for this step
    progress: int  # FOCUS's progress before the step (spec §4.7)
    kept: dict[str, list[bool]]  # selector -> keep flags


def group_steps(rows: Iterable) -> list[StepRecord]:
    """`decodability.TokenStep` rows (one per masked token per step) grouped into steps, in decoding order."""
    steps: dict[tuple[int, int], StepRecord] = {}
    for r in rows:
        key = (r.request, r.step)
        if key not in steps:
            steps[key] = StepRecord(r.request, r.task, r.block, r.block_step, r.prefill, [], [], [])
        steps[key].positions.append(r.position)
        steps[key].delta.append(r.delta)
        steps[key].decoded.append(r.decoded)
    return [steps[k] for k in sorted(steps)]


class BudgetCounter:
    """S (tokens decoded) and N (steps that decoded any) of one request, reset per block or per request."""

    def __init__(self, reset: str):
        assert reset in BUDGET_RESETS, f"budget_reset must be one of {BUDGET_RESETS}, got {reset!r}"
        self.reset, self.unmasked, self.decoding_steps, self.block = reset, 0, 0, None

    def enter(self, block: int) -> None:
        if block != self.block and self.reset == "block":
            self.unmasked = self.decoding_steps = 0
        self.block = block

    def record(self, decoded: int) -> None:
        self.unmasked += decoded
        self.decoding_steps += decoded > 0


def focus_selection(step: StepRecord, counter: BudgetCounter, progress: int, alpha: float,
                    backend: str | None = None) -> tuple[int, bool, list[bool]]:
    """(target, evict, keep flags) of FOCUS's selection at `step`, from the package's kernels."""
    m = len(step.positions)
    average = kernels.average_decoded(torch.tensor([counter.unmasked]), torch.tensor([counter.decoding_steps]))
    budget = kernels.budget_targets(torch.tensor([m]), average, alpha)
    evict = bool(budget.evict[0]) and not step.prefill
    keep = kernels.select_enforce(
        torch.tensor(step.delta, dtype=torch.float32), torch.tensor(step.positions, dtype=torch.int32),
        torch.tensor([0, m], dtype=torch.int32), budget.target.to(torch.int32), torch.tensor([evict]),
        torch.tensor([progress], dtype=torch.int32), max_m=max(1, m), backend=backend)
    return int(budget.target[0]), evict, keep.tolist()


def baseline_keeps(step: StepRecord, count: int, rng: random.Random) -> dict[str, list[bool]]:
    """Keep flags of `random` and `leftmost` keeping `count` candidates, and of `oracle` (the decoded ones)."""
    m = len(step.positions)
    chosen = set(rng.sample(range(m), count))
    return {"random": [i in chosen for i in range(m)], "leftmost": [i < count for i in range(m)],
            "oracle": list(step.decoded)}


# Whose block progress (spec §4.7) FOCUS's gap fill runs against: "focus", the progress FOCUS reaches when it
# evicts at every step (its own keep sets); "trajectory", the progress of the recorded trajectory itself, which
# processed its whole block at every step (stock decoding, or a FOCUS server whose evicting steps were all
# audited): -1 on a block's first step, B - 1 after it.
PROGRESS_MODES = ("focus", "trajectory")


def replay(steps: Sequence[StepRecord], *, alpha: float = 1.5, budget_reset: str = "block", seed: int = 0,
           backend: str | None = None, progress_of: str = "focus",
           block_size: int | None = None) -> list[StepSelection]:
    """Every selector's keep set at every step of the stock trajectory (`steps` in decoding order).

    `progress_of` (PROGRESS_MODES): "trajectory" needs `block_size`, and gives the keep sets an audited FOCUS
    server selects on the same trajectory (`audit_every: 1`: its steps run unevicted)."""
    assert progress_of in PROGRESS_MODES, f"progress_of must be one of {PROGRESS_MODES}, got {progress_of!r}"
    assert progress_of == "focus" or block_size, "progress_of='trajectory' needs the block size"
    rng = random.Random(f"selection:{seed}")
    counters: dict[int, BudgetCounter] = {}
    progress: dict[tuple[int, int], int] = {}
    out = []
    for step in steps:
        counter = counters.setdefault(step.request, BudgetCounter(budget_reset))
        counter.enter(step.block)
        prog = progress.get((step.request, step.block), -1)
        target, evict, focus = focus_selection(step, counter, prog, alpha, backend)
        kept = {"focus": focus, **baseline_keeps(step, sum(focus), rng)}
        out.append(StepSelection(step, target, evict, prog, kept))
        processed = [p for p, k in zip(step.positions, focus) if k] if progress_of == "focus" else [block_size - 1]
        progress[(step.request, step.block)] = max([prog, *processed])
        counter.record(sum(step.decoded))
    return out


def selector_metrics(selections: Sequence[StepSelection], selector: str) -> dict:
    """Decodable recall, wrong evictions and kept share of `selector` over `selections`."""
    decoded = hit = kept = candidates = wrong_steps = 0
    for s in selections:
        flags = s.kept[selector]
        hits = sum(k and d for k, d in zip(flags, s.step.decoded))
        decoded, hit = decoded + sum(s.step.decoded), hit + hits
        kept, candidates = kept + sum(flags), candidates + len(flags)
        wrong_steps += hits < sum(s.step.decoded)
    n = max(1, len(selections))
    return {"decodable_recall": hit / decoded if decoded else None,
            "wrong_evictions_per_step": (decoded - hit) / n,
            "steps_with_wrong_eviction": wrong_steps / n,
            "kept_share": kept / candidates if candidates else None}


def audit_counts(selections: Sequence[StepSelection]) -> dict[int, dict[str, int]]:
    """Per request, what an eviction audit of every evicting step counts (`stats.AuditStats`): the steps where
    FOCUS evicts, the tokens decoded in them and, of those, the ones FOCUS's keep set evicts."""
    out: dict[int, dict[str, int]] = {}
    for s in selections:
        counts = out.setdefault(s.step.request, {"steps": 0, "decodable": 0, "evicted_decodable": 0})
        if s.evicts:
            counts["steps"] += 1
            counts["decodable"] += sum(s.step.decoded)
            counts["evicted_decodable"] += sum(d and not k for d, k in zip(s.step.decoded, s.kept["focus"]))
    return out


def report(selections: Sequence[StepSelection]) -> dict:
    """Per selector, overall and per task; plus FOCUS's view by step index within the block."""
    tasks = sorted({s.step.task for s in selections})
    groups = {"all": list(selections), **{t: [s for s in selections if s.step.task == t] for t in tasks}}
    out = {name: {"steps": len(group), "evicting_steps": sum(s.evicts for s in group),
                  **{sel: selector_metrics(group, sel) for sel in SELECTORS}}
           for name, group in groups.items()}
    return {"by_task": out, "by_block_step": by_block_step(selections)}


def by_block_step(selections: Sequence[StepSelection], last: int = 8) -> list[dict]:
    """FOCUS's recall, kept share and mean target by step index within the block (steps >= `last` pooled)."""
    rows = []
    for index in range(last + 1):
        group = [s for s in selections if min(s.step.block_step, last) == index]
        if group:
            metrics = selector_metrics(group, "focus")
            rows.append({"block_step": f"{index}+" if index == last else str(index), "steps": len(group),
                         "mean_target": sum(s.target for s in group) / len(group),
                         "mean_decoded": sum(sum(s.step.decoded) for s in group) / len(group),
                         "decodable_recall": metrics["decodable_recall"], "kept_share": metrics["kept_share"]})
    return rows


def format_report(result: dict, *, alpha: float, budget_reset: str) -> str:
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"  # noqa: E731
    lines = [f"\nselection on the stock trajectory (α = {alpha}, budget reset per {budget_reset}): "
             "decodable recall / wrong evictions per step / steps with a wrong eviction / kept share",
             f"{'task':10} {'steps':>6} {'evicting':>9} " + " ".join(f"{sel:>26}" for sel in SELECTORS)]
    for task, row in result["by_task"].items():
        cells = []
        for sel in SELECTORS:
            m = row[sel]
            cells.append(f"{fmt(m['decodable_recall'])} {m['wrong_evictions_per_step']:.2f} "
                         f"{m['steps_with_wrong_eviction']:.2f} {fmt(m['kept_share'])}")
        lines.append(f"{task:10} {row['steps']:>6} {row['evicting_steps']:>9} " + " ".join(f"{c:>26}" for c in cells))
    lines.append(f"\nFOCUS by step within the block: {'step':>5} {'steps':>6} {'target':>7} {'decoded':>8} "
                 f"{'recall':>7} {'kept':>6}")
    for row in result["by_block_step"]:
        lines.append(f"{'':32}{row['block_step']:>5} {row['steps']:>6} {row['mean_target']:>7.2f} "
                     f"{row['mean_decoded']:>8.2f} {fmt(row['decodable_recall']):>7} {fmt(row['kept_share']):>6}")
    return "\n".join(lines)


def save_plot(results: dict[str, dict], path, title: str) -> None:
    """Recall vs kept share per selector (one marker per task, a large one for all tasks), and FOCUS's recall and
    kept share by step within the block; `results` maps a budget-reset setting to its `report`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (scatter, per_step) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = dict(zip(SELECTORS, ("tab:red", "tab:gray", "tab:blue", "tab:green")))
    markers = dict(zip(SELECTORS, ("o", "s", "^", "D")))  # hollow and distinct: equal kept counts overlap
    first = next(iter(results.values()))
    for sel in SELECTORS:
        for task, row in first["by_task"].items():
            m = row[sel]
            if m["decodable_recall"] is None:
                continue
            big = task == "all"
            scatter.scatter(m["kept_share"], m["decodable_recall"], facecolors="none", edgecolors=colours[sel],
                            s=140 if big else 30, marker=markers[sel], linewidths=2 if big else 1,
                            label=sel if big else None)
    scatter.set(xlabel="kept share of masked candidates", ylabel="decodable recall", xlim=(0, 1.02), ylim=(0, 1.02),
                title="selectors at FOCUS's kept count (small: per task)")
    scatter.legend(loc="lower right")
    for (reset, result), style in zip(results.items(), ("-", "--")):
        steps = [r["block_step"] for r in result["by_block_step"]]
        per_step.plot(steps, [r["decodable_recall"] for r in result["by_block_step"]], style, color="tab:red",
                      marker="o", label=f"recall (reset per {reset})")
        per_step.plot(steps, [r["kept_share"] for r in result["by_block_step"]], style, color="tab:blue",
                      marker="s", label=f"kept share (reset per {reset})")
    per_step.set(xlabel="denoising step within the block", ylim=(0, 1.02), title="FOCUS by step within the block")
    per_step.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
