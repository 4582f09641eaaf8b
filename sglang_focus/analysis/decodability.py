"""Does the layer-0 -> layer-1 importance delta predict which masked tokens get decoded? (FOCUS's central claim)

    python -m sglang_focus.analysis.decodability --model-path models/sdar-tasks [--n 200] [--out DIR]

Decodes `n` held-out task prompts with greedy LowConfidence (the stock rule, no eviction) on the plain-PyTorch
copy of the checkpoint (`sglang_focus.training.train`, token-for-token equal to SGLang's SDAR), and at every denoising
forward records, for each masked token of the current block: its layer-0 importance I0, layer-1 importance I1 and
delta I1 - I0 (FOCUS_SPEC §4.3-4.4, computed by the kernels' PyTorch reference over the block's masked rows), and
whether the step decoded it. Reports the ROC-AUC of each score for "decoded at this step" (pooled over all steps,
and averaged within steps that decode some but not all of their candidates) next to a positional baseline
(leftmost first), the recall of the top-k by delta (k = tokens decoded), and tokens decoded per forward. Then
replays FOCUS's real selection, and random and leftmost selectors with the same kept counts, on every step
(`sglang_focus.analysis.selection`), with the budget reset per block and carried over the request.

Writes DIR/decodability.json, DIR/decodability.png (ROC curves and delta histograms), DIR/selection.json,
DIR/selection.png (recall vs kept share per selector, FOCUS by step within the block) and DIR/steps.csv (one row
per token per step).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from tqdm import tqdm

from sglang_focus.analysis import selection
from sglang_focus.kernels.reference import importance_reference
from sglang_focus.training import tasks
from sglang_focus.training.checkpoints import EMBEDDED_DEFAULT
from sglang_focus.training.tokenizer import EOS_TOKEN

# The claim, the two single-layer ablations, and a positional baseline (leftmost candidate first).
SCORES = ("delta", "i1", "i0", "leftmost")
LABELS = {"delta": "delta = I1 - I0", "i1": "I1 alone", "i0": "I0 alone", "leftmost": "leftmost first"}
OUTPUTS = ("decodability.json", "decodability.png", "selection.json", "selection.png", "steps.csv")


class TokenStep(NamedTuple):
    request: int
    task: str
    step: int  # denoising forward of this request (0-based, over all its blocks)
    position: int  # block position of the masked token
    candidates: int  # masked tokens of the block at this step (m)
    i0: float
    i1: float
    delta: float
    decoded: bool  # the LowConfidence rule decoded it at this step
    block: int  # absolute position of the block's first token
    block_step: int  # denoising step within the block (0-based)
    prefill: bool  # the block's first step while it still holds prompt tokens

    @property
    def leftmost(self) -> float:
        return -float(self.position)


class Decoding(NamedTuple):
    """Per-request totals of the stock decoding."""

    task: str
    correct: bool
    decoded: int  # tokens unmasked
    steps: int  # denoising forwards
    blocks: int  # blocks decoded (SGLang runs one more forward per block to commit it)


def step_importances(qk: Sequence, start: int, masked: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(I0, I1) over the masked rows `masked` of the block starting at `start`, from layers 0 and 1's q/k."""
    rows = torch.tensor([start + j for j in masked])
    cu_seqlens = torch.tensor([0, len(masked)], dtype=torch.int32)
    out = []
    for q, k in qk[:2]:
        q_rows, k_rows = q[0, rows].float(), k[0, rows].float()
        out.append(importance_reference(q_rows, k_rows, cu_seqlens, sm_scale=1.0 / math.sqrt(q.shape[-1])))
    return out[0], out[1]


def record_problem(model, tokenizer, problem: tasks.Problem, request: int, *, threshold: float,
                   max_new_tokens: int) -> tuple[list[TokenStep], Decoding]:
    """Every masked token of every denoising step of one request; and the request's totals."""
    from sglang_focus.training.train import block_diffusion_generate

    rows: list[TokenStep] = []
    steps, block_steps = 0, {}
    prompt, _ = tasks.encode_problem(tokenizer, problem)

    def observe(step) -> None:
        nonlocal steps
        i0, i1 = step_importances(step.qk, step.start, step.masked)
        index, steps = steps, steps + 1
        in_block = block_steps.get(step.start, 0)
        block_steps[step.start] = in_block + 1
        prefill = in_block == 0 and step.start < len(prompt)
        for j, pos in enumerate(step.masked):
            rows.append(TokenStep(request, problem.task, index, pos, len(step.masked), float(i0[j]), float(i1[j]),
                                  float(i1[j] - i0[j]), pos in step.chosen, step.start, in_block, prefill))

    result = block_diffusion_generate(model, prompt, threshold=threshold, max_new_tokens=max_new_tokens,
                                      eos_id=tokenizer.token_to_id(EOS_TOKEN), on_step=observe)
    correct = tasks.is_correct(problem, tokenizer.decode(result.ids, skip_special_tokens=False))
    return rows, Decoding(problem.task, correct, result.decoded, result.steps, result.blocks)


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney); None without both classes."""
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels, dtype=torch.bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return None
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for value in torch.unique(s[torch.cat([s[order][1:] == s[order][:-1], torch.tensor([False])])]):
        tied = s == value
        ranks[tied] = ranks[tied].mean()  # average ranks over ties
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def roc_curve(scores: Sequence[float], labels: Sequence[bool]) -> tuple[list[float], list[float]]:
    """(false-positive rates, true-positive rates) sweeping the threshold from high to low."""
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels, dtype=torch.float64)
    y = y[torch.argsort(s, descending=True)]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    return [0.0, *(fp / max(1.0, float(fp[-1]))).tolist()], [0.0, *(tp / max(1.0, float(tp[-1]))).tolist()]


def within_step_auc(rows: Sequence[TokenStep], score: str) -> float | None:
    """Mean ROC-AUC over steps that decode some but not all of their candidates (the ranking FOCUS relies on)."""
    aucs = [roc_auc([getattr(r, score) for r in g], [r.decoded for r in g]) for g in _by_step(rows)]
    aucs = [a for a in aucs if a is not None]
    return sum(aucs) / len(aucs) if aucs else None


def _by_step(rows: Sequence[TokenStep]) -> list[list[TokenStep]]:
    groups: dict[tuple[int, int], list[TokenStep]] = {}
    for r in rows:
        groups.setdefault((r.request, r.step), []).append(r)
    return list(groups.values())


def decoding_rates(decodings: Sequence[Decoding], block_size: int) -> dict:
    """Tokens decoded per denoising step, and per forward counting one commit forward per block. A server's own
    counter (`meta_info["focus_stats"]`, what the benchmarks report) also counts its prefill and FDFO rounds and is
    lower: 3.59 against 4.45 here for models/sdar-tasks."""
    decoded = sum(d.decoded for d in decodings)
    steps, forwards = sum(d.steps for d in decodings), sum(d.steps + d.blocks for d in decodings)
    per_forward = decoded / forwards if forwards else None
    return {"tokens_per_step": decoded / steps if steps else None, "tokens_per_forward": per_forward,
            "block_share_per_forward": per_forward / block_size if per_forward is not None else None,
            "block_size": block_size}


def chance_top_k_recall(rows: Sequence[TokenStep]) -> float | None:
    """`top_k_recall` of a random ranking: the decoded-weighted mean of k / m."""
    groups = _by_step(rows)
    total = sum(sum(r.decoded for r in g) for g in groups)
    return sum(sum(r.decoded for r in g) ** 2 / len(g) for g in groups) / total if total else None


def top_k_recall(rows: Sequence[TokenStep], score: str) -> float | None:
    """Share of decoded tokens that are among the k highest-`score` candidates of their step (k = decoded)."""
    hit = total = 0
    for g in _by_step(rows):
        k = sum(r.decoded for r in g)
        top = sorted(g, key=lambda r: getattr(r, score), reverse=True)[:k]
        hit, total = hit + sum(r.decoded for r in top), total + k
    return hit / total if total else None


def per_task_summary(rows: Sequence[TokenStep], decodings: Sequence[Decoding], block_size: int) -> dict:
    out = {}
    for task in sorted({d.task for d in decodings}):
        mine = [d for d in decodings if d.task == task]
        out[task] = {"accuracy": sum(d.correct for d in mine) / len(mine), **decoding_rates(mine, block_size),
                     **summarize([r for r in rows if r.task == task])}
    return out


def summarize(rows: Sequence[TokenStep]) -> dict:
    labels = [r.decoded for r in rows]
    out = {"tokens": len(rows), "decoded": sum(labels), "steps": len({(r.request, r.step) for r in rows}),
           "chance_top_k_recall": chance_top_k_recall(rows)}
    for score in SCORES:
        values = [getattr(r, score) for r in rows]
        out[score] = {"roc_auc": roc_auc(values, labels), "within_step_roc_auc": within_step_auc(rows, score),
                      "top_k_recall": top_k_recall(rows, score)}
    return out


def save_plot(rows: Sequence[TokenStep], summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r.decoded for r in rows]
    fig, (roc_ax, hist_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    for score in SCORES:
        fpr, tpr = roc_curve([getattr(r, score) for r in rows], labels)
        roc_ax.plot(fpr, tpr, label=f"{LABELS[score]} (AUC {summary[score]['roc_auc']:.3f})")
    roc_ax.plot([0, 1], [0, 1], color="gray", linestyle=":", linewidth=1)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="decoded at this step: ROC")
    roc_ax.legend(loc="lower right")
    decoded = [r.delta for r in rows if r.decoded]
    waiting = [r.delta for r in rows if not r.decoded]
    hist_ax.hist([waiting, decoded], bins=60, density=True, histtype="stepfilled", alpha=0.5,
                 label=[f"still masked after the step ({len(waiting)})", f"decoded at the step ({len(decoded)})"])
    hist_ax.set(xlabel="importance delta I1 - I0", ylabel="density", title="delta by outcome")
    hist_ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csv(rows: Sequence[TokenStep], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(TokenStep._fields)
        writer.writerows(rows)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=EMBEDDED_DEFAULT,
                   help="a checkpoint trained on a task suite (default: the embedded default)")
    p.add_argument("--n", type=int, default=200, help="held-out problems to decode")
    p.add_argument("--seed", default="0", help="held-out sample seed")
    p.add_argument("--threshold", type=float, default=0.8, help="LowConfidence threshold τ")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--alpha", type=float, default=1.5, help="FOCUS budget factor α for the selection replay")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path(".cache/decodability"))
    args = p.parse_args(argv)
    if args.n < 1:
        p.error("--n must be at least 1")
    if not (args.model_path / "model.safetensors").exists():
        p.error(f"--model-path {args.model_path}: no model.safetensors")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    from sglang_focus.training.checkpoints import load_for_decoding

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_for_decoding(args.model_path)
    model.eval()
    began = time.perf_counter()
    rows, decodings = decode_heldout(model, tokenizer, args)
    summary = {"model": args.model_path.name, "n": args.n, "threshold": args.threshold,
               "accuracy": sum(d.correct for d in decodings) / args.n,
               **decoding_rates(decodings, model.cfg["block_size"]), **summarize(rows),
               "per_task": per_task_summary(rows, decodings, model.cfg["block_size"]),
               "seconds": round(time.perf_counter() - began, 1)}
    selections = {reset: selection.report(selection.replay(selection.group_steps(rows), alpha=args.alpha,
                                                           budget_reset=reset))
                  for reset in selection.BUDGET_RESETS}
    write_outputs(args, rows, summary, selections)
    print_summary(summary)
    for reset, result in selections.items():
        print(selection.format_report(result, alpha=args.alpha, budget_reset=reset))
    return summary


def decode_heldout(model, tokenizer, args: argparse.Namespace) -> tuple[list[TokenStep], list[Decoding]]:
    rows: list[TokenStep] = []
    decodings: list[Decoding] = []
    problems = tasks.generate("heldout", args.n, seed=args.seed, tasks=tasks.suite_of(args.model_path))
    for i, problem in enumerate(tqdm(problems, desc="decode", unit="req")):
        request_rows, decoding = record_problem(model, tokenizer, problem, i, threshold=args.threshold,
                                                max_new_tokens=args.max_new_tokens)
        rows += request_rows
        decodings.append(decoding)
    return rows, decodings


def write_outputs(args: argparse.Namespace, rows: Sequence[TokenStep], summary: dict, selections: dict) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decodability.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "selection.json").write_text(json.dumps(
        {"model": summary["model"], "n": summary["n"], "threshold": args.threshold, "alpha": args.alpha,
         "budget_reset": selections}, indent=2) + "\n")
    write_csv(rows, args.out / "steps.csv")
    title = (f"{args.model_path.name}: {summary['tokens']} masked tokens over {summary['steps']} steps, "
             f"τ = {args.threshold}")
    save_plot(rows, summary, args.out / "decodability.png", title)
    selection.save_plot(selections, args.out / "selection.png", f"{title}, α = {args.alpha}")
    print(f"wrote {', '.join(str(args.out / f) for f in OUTPUTS)}")


def print_summary(summary: dict) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{summary['model']}: {summary['n']} held-out requests, {summary['steps']} denoising steps, "
          f"{summary['tokens']} masked tokens ({summary['decoded']} decoded at their step), τ = {summary['threshold']}, "
          f"accuracy {summary['accuracy']:.3f}")
    print(f"tokens per step {fmt(summary['tokens_per_step'])}, per forward {fmt(summary['tokens_per_forward'])} "
          f"({100 * (summary['block_share_per_forward'] or 0):.1f} % of a {summary['block_size']}-token block)")
    print(f"{'score':18} {'ROC-AUC':>8} {'within-step':>12} {'top-k recall':>13}")
    for score in SCORES:
        s = summary[score]
        print(f"{LABELS[score]:18} {fmt(s['roc_auc']):>8} {fmt(s['within_step_roc_auc']):>12} "
              f"{fmt(s['top_k_recall']):>13}")
    print(f"{'random ranking':18} {0.5:>8.3f} {0.5:>12.3f} {fmt(summary['chance_top_k_recall']):>13}")
    print(f"\n{'task':10} {'accuracy':>8} {'tok/fwd':>8} {'tokens':>7} {'decoded':>8} {'delta within':>13} "
          f"{'leftmost within':>16}")
    for task, t in summary["per_task"].items():
        print(f"{task:10} {t['accuracy']:>8.3f} {fmt(t['tokens_per_forward']):>8} {t['tokens']:>7} "
              f"{t['decoded'] / max(1, t['tokens']):>8.2f} {fmt(t['delta']['within_step_roc_auc']):>13} "
              f"{fmt(t['leftmost']['within_step_roc_auc']):>16}")


if __name__ == "__main__":
    main()
