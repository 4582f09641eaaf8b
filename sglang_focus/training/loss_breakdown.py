"""Where a checkpoint's masked cross-entropy goes: per task family and per kind of answer token, on held-out problems.

A training run's loss is one number; whether the model has learned to copy values from the prompt, to carry a
computation from one answer token to the next, or only the answer templates shows in how the loss splits over token
kinds: `digit` (one per token, the computed or copied values), `end` (end of answer and the padding after it),
`other` (words, names, punctuation). A value near ln 10 ≈ 2.30 nats on digits means the digits are guessed.

Each answer block of each problem is scored as training sees it (earlier blocks clean, block-causal attention) with
every answer position of the block masked at ratio `--mask-ratio`, on the canonical answer; for the any-order
families the model may prefer another valid order, so their numbers are an upper bound.

    python -m sglang_focus.training.loss_breakdown --model-path models/sdar-tasks --n 10
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sglang_focus.training import tasks
from sglang_focus.training.train import (
    IGNORE,
    Example,
    SdarLM,
    answer_blocks,
    block_causal_visibility,
    load_checkpoint,
    padded_sequence,
)

KINDS = ("digit", "end", "other")


def token_kinds(tokenizer, ids: Sequence[int], *, end_ids: set[int]) -> list[str]:
    """The kind of each token id: `end` for end-of-answer and padding ids, `digit` for a token that decodes to
    digits only, else `other`."""
    kinds = []
    for token in ids:
        text = tokenizer.decode([token]).strip()
        kinds.append("end" if token in end_ids else "digit" if text.isdigit() else "other")
    return kinds


def block_losses(model: SdarLM, ex: Example, *, block_size: int, mask_id: int, pad_id: int, mask_ratio: float,
                 gen: torch.Generator) -> list[tuple[int, float]]:
    """(target id, cross-entropy in nats) of every masked answer position, each answer block scored on its own."""
    clean = padded_sequence(ex, block_size, pad_id)
    scored = []
    for block in answer_blocks(ex, block_size):
        lo, end = max(block * block_size, len(ex.prompt)), (block + 1) * block_size
        masked = torch.rand(end - lo, generator=gen) < mask_ratio
        if not masked.any():
            masked[0] = True
        noisy = torch.tensor(clean[:end])
        positions = lo + torch.nonzero(masked).flatten()
        noisy[positions] = mask_id
        with torch.no_grad():
            hidden = model.hidden(noisy.unsqueeze(0), block_causal_visibility(end, block_size), torch.arange(end))
            ce = F.cross_entropy(model.logits(hidden[0, positions]), torch.tensor(clean)[positions],
                                 reduction="none")
        scored += [(clean[p], float(c)) for p, c in zip(positions.tolist(), ce)]
    return scored


def breakdown(model_path: Path, *, n: int, seed: str, mask_ratio: float) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {kind: {"nats": mean cross-entropy, "tokens": count}}} over `n` held-out problems per task (the
    checkpoint's suite), plus "all" over every task."""
    model, tokenizer = load_checkpoint(model_path)
    model.eval()
    cfg = model.cfg
    block, mask_id, pad_id = cfg["block_size"], cfg["mask_token_id"], cfg["pad_token_id"]
    end_ids = {pad_id, cfg["eos_token_id"]}
    families = tasks.suite_of(model_path)
    problems = tasks.generate("heldout", n * len(families), seed=seed, tasks=families)
    gen = torch.Generator().manual_seed(0)
    sums: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0]))
    for problem in tqdm(problems, desc="scoring", unit="problem"):
        ex = Example(*tasks.encode_problem(tokenizer, problem))
        for target, nats in block_losses(model, ex, block_size=block, mask_id=mask_id, pad_id=pad_id,
                                         mask_ratio=mask_ratio, gen=gen):
            kind = token_kinds(tokenizer, [target], end_ids=end_ids)[0]
            for task in (problem.task, "all"):
                sums[task][kind][0] += nats
                sums[task][kind][1] += 1
    return {task: {kind: {"nats": total / count, "tokens": count} for kind, (total, count) in kinds.items()}
            for task, kinds in sums.items()}


def format_table(table: dict[str, dict[str, dict[str, float]]]) -> str:
    """Rows: tasks (then "all"); columns: mean nats per token kind, with token counts."""
    lines = [f"{'task':<8}" + "".join(f"{kind:>16}" for kind in KINDS)]
    for task in [t for t in table if t != "all"] + ["all"]:
        cells = [table[task].get(kind) for kind in KINDS]
        lines.append(f"{task:<8}" + "".join("-".rjust(16) if c is None else f"{c['nats']:8.3f} ({c['tokens']:>4})"
                                             .rjust(16) for c in cells))
    lines.append(f"(nats of masked cross-entropy; ln 10 = {math.log(10):.2f} is a uniform guess among digits)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", type=Path, required=True, help="an exported task-suite checkpoint")
    parser.add_argument("--n", type=int, default=10, help="held-out problems per task")
    parser.add_argument("--seed", default="loss-breakdown")
    parser.add_argument("--mask-ratio", type=float, default=0.5, help="share of each block's answer positions masked")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if not (args.model_path / "config.json").is_file():
        parser.error(f"--model-path {args.model_path}: no config.json")
    if args.n < 1 or not 0 < args.mask_ratio <= 1:
        parser.error("--n must be >= 1 and --mask-ratio in (0, 1]")
    table = breakdown(args.model_path, n=args.n, seed=args.seed, mask_ratio=args.mask_ratio)
    print(format_table(table))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(table, indent=1))
    return table


if __name__ == "__main__":
    main()
