"""Block-diffusion fine-tuning of the converted SmolLM2 with a LoRA adapter, on the CPU, resumable bit-exactly.

    python -m sglang_focus.training.finetune --out models/smollm2-dllm/adapter --steps 3000 [--resume] [--max-minutes M]

Objective (SDAR's, as served: no shift, a masked position's own logits predict it): each sample is a chat prompt
and its answer (ending with `<|im_end|>`, padded with `<|endoftext|>` to a block boundary) on the fixed 32-token
block grid; one answer block is noised (answer positions masked with probability t ~ U(0.1, 1)), earlier blocks stay
clean, the sample is cut after that block, attention is block-causal, and the loss is the mean cross-entropy of the
masked tokens (`train.make_batch` / `train.diffusion_loss`, shared with the from-scratch models).

Distillation (`--distill-weight W`, one_block only): the frozen autoregressive base, run causally over the sample's
clean tokens, gives at position p - 1 the exact distribution of the token at the leftmost masked position p of the
noised block (everything before p is clean); the loss adds W times KL(teacher || student at p), averaged over the
samples. The teacher is the base checkpoint without the adapter.

Data: the task families (`--task-suite`, training split, every valid answer drawn uniformly) and the chat set's
training split (`--chat-data`, share `--chat-share`), in SmolLM2's chat format with or without its default system
prompt (`--system-share`), so both the raw-id tools and the OpenAI route see a format the model was trained on. A
step's samples are a function of (seed, step) alone, so `--resume` continues bit-exactly.

What the run writes into OUT: `train_state.pt` (adapter, AdamW state, step, the run's arguments; committed while
a run is unfinished), `adapter.safetensors` (the adapter alone, what a finished run ships) and
`train_log.jsonl`. `convert_smollm2 --adapter OUT` builds the served checkpoint from the base and the adapter.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from tqdm import tqdm

from sglang_focus.training import chat_data, tasks
from sglang_focus.training.llama_dllm import LlamaDllm
from sglang_focus.training.train import (IGNORE, DiffusionBatch, Example, descend, diffusion_loss, lr_at, make_batch,
                                         make_optimizer, train_step)

STATE_FILE = "train_state.pt"
ADAPTER_FILE = "adapter.safetensors"
LOG_FILE = "train_log.jsonl"
DEFAULT_SUITE = "tasks-all"
# How a step picks the family of each task sample: uniformly at random from the suite. (Runs saved before this key
# existed took a step's task samples as the suite's first families in order, so with batch 8 the last families of
# tasks-all -- story, invent, pack -- never appeared; those states do not resume with this draw.)
TASK_DRAW = "uniform"
# The arguments that define the run (plus TASK_DRAW); --resume refuses to continue a state saved with other values.
ARG_KEYS = ("rank", "alpha", "task_suite", "chat_share", "system_share", "batch_size", "lr", "warmup", "steps",
            "min_lr_ratio", "weight_decay", "objective", "seed", "distill_weight")
RUN_KEYS = (*ARG_KEYS, "task_draw")
# Run keys added after states were saved without them: a missing key reads as this value (what those runs did).
RUN_KEY_DEFAULTS = {"distill_weight": 0.0, "task_draw": "first_families"}


class Mix:
    """Where a step's samples come from: task problems and chat records, tokenized in SmolLM2's chat format."""

    def __init__(self, tokenizer: Tokenizer, families: Sequence[str], chat_records: Sequence[dict], *,
                 chat_share: float, system_share: float):
        self.tokenizer, self.families, self.chat = tokenizer, tuple(families), list(chat_records)
        self.chat_share, self.system_share = chat_share if self.chat else 0.0, system_share
        self.eos = tokenizer.token_to_id("<|im_end|>")

    def examples(self, *, seed: int, step: int, batch_size: int) -> list[Example]:
        """The `step`'s samples: a function of (seed, step) only. Each sample is a chat record with probability
        `chat_share`, else a training problem of a family drawn uniformly from `families`."""
        rng = random.Random(f"finetune:{seed}:{step}")
        is_chat = [rng.random() < self.chat_share for _ in range(batch_size)]
        families = [rng.choice(self.families) for chat in is_chat if not chat]
        problems = iter(tasks.generate("train", len(families), seed=f"{seed}:{step}", tasks=families))
        out = []
        for chat in is_chat:
            system = rng.random() < self.system_share
            if chat:
                record = rng.choice(self.chat)
                prompt, answer = record["prompt"], record["response"]
            else:
                problem = next(problems)
                prompt, answer = problem.prompt, tasks.training_answer(problem, rng)
            out.append(self.encode(prompt, answer, system=system))
        return out

    def encode(self, user: str, answer: str, *, system: bool) -> Example:
        prompt = self.tokenizer.encode(chat_data.chat_text(user, system=system)).ids
        return Example(prompt, self.tokenizer.encode(answer).ids + [self.eos])


def save_state(out: Path, model: LlamaDllm, opt: torch.optim.Optimizer, step: int, run: dict) -> None:
    """The resumable state (written atomically) and the adapter alone."""
    tmp = out / (STATE_FILE + ".tmp")
    torch.save({"adapter": model.adapter_state(), "optimizer": opt.state_dict(), "step": step, "run": run}, tmp)
    tmp.replace(out / STATE_FILE)
    save_adapter(model, out / ADAPTER_FILE, run=run, step=step)


def save_adapter(model: LlamaDllm, path: Path, *, run: dict, step: int) -> None:
    metadata = {"rank": str(model.rank), "alpha": str(model.alpha), "step": str(step), "run": json.dumps(run)}
    save_file({k: v.contiguous() for k, v in model.adapter_state().items()}, str(path), metadata=metadata)


def resume(out: Path, model: LlamaDllm, opt: torch.optim.Optimizer, run: dict) -> int:
    path = out / STATE_FILE
    if not path.exists():
        raise SystemExit(f"--resume: no {path}")
    state = torch.load(path, weights_only=False, map_location="cpu")
    saved = {k: state["run"].get(k, RUN_KEY_DEFAULTS.get(k)) for k in RUN_KEYS}
    changed = {k: (saved[k], run[k]) for k in RUN_KEYS if saved[k] != run[k]}
    if changed:
        raise SystemExit(f"--resume: {path} was saved with other settings: "
                         + ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in changed.items()))
    model.load_adapter_state(state["adapter"])
    opt.load_state_dict(state["optimizer"])
    return int(state["step"])


def init_from_adapter(model: LlamaDllm, adapter: Path) -> str:
    """Load a trained adapter (a run directory or its adapter.safetensors) into `model` to start a new run from it;
    returns the adapter's sha256. Its rank and alpha must be the run's (they fix what the LoRA factors mean)."""
    from sglang_focus.training import convert_smollm2

    try:
        path = convert_smollm2.adapter_file(adapter)
    except convert_smollm2.ConversionError as err:
        raise SystemExit(f"--init-adapter: {err}") from None
    meta = convert_smollm2.adapter_metadata(path)
    found, wanted = (int(meta["rank"]), float(meta["alpha"])), (model.rank, float(model.alpha))
    if found != wanted:
        raise SystemExit(f"--init-adapter: {path} has rank {found[0]}, alpha {found[1]:g}; this run has rank "
                         f"{wanted[0]}, alpha {wanted[1]:g}")
    model.load_adapter_state(load_file(str(path)))
    return convert_smollm2.sha256_of(path)


def leftmost_masked(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions): each row's leftmost masked position (rows without one are left out)."""
    masked = targets != IGNORE
    rows = torch.nonzero(masked.any(1)).flatten()
    return rows, masked[rows].float().argmax(1)


def distillation_kl(model: LlamaDllm, teacher: LlamaDllm, batch: DiffusionBatch, hidden: torch.Tensor, *,
                    pad_id: int) -> torch.Tensor:
    """Mean over samples of KL(teacher(. | clean prefix) || student) at each sample's leftmost masked position.

    `hidden` is the student's final hidden state for `batch` (one_block layout: one noised block per row, so the
    tokens before its leftmost masked position are all clean). Samples whose leftmost masked token is the padding
    after `<|im_end|>` are left out (the autoregressive model never continues past it). The mask token's column is
    left out of both distributions (the student can never emit it; the teacher never saw it)."""
    clean = torch.where(batch.targets != IGNORE, batch.targets, batch.input_ids)
    rows, first = leftmost_masked(batch.targets)
    answer = clean[rows, first] != pad_id
    rows, first = rows[answer], first[answer]
    if len(rows) == 0:
        return hidden.sum() * 0.0
    causal = torch.ones(clean.shape[1], clean.shape[1], dtype=torch.bool).tril()
    keep = torch.arange(model.embed.shape[0]) != model.shape.mask_id
    with torch.no_grad():
        teacher_hidden = teacher.hidden(clean[rows], causal)[torch.arange(len(rows)), first - 1]
        teacher_logp = F.log_softmax((teacher_hidden @ teacher.embed.T)[:, keep], dim=-1)
    student_logp = F.log_softmax((hidden[rows, first] @ model.embed.T)[:, keep], dim=-1)
    return F.kl_div(student_logp, teacher_logp, log_target=True, reduction="batchmean")


def distill_step(model: LlamaDllm, teacher: LlamaDllm, opt: torch.optim.Optimizer, batch: DiffusionBatch, *,
                 lr: float, weight: float, pad_id: int, clip: float = 1.0) -> tuple[float, float]:
    """`train.train_step` with the distillation term added; returns (masked cross-entropy, KL) before the step."""
    hidden = model.hidden(batch.input_ids, batch.visible, batch.positions)
    loss, ce = diffusion_loss(model, batch, hidden=hidden)
    kl = distillation_kl(model, teacher, batch, hidden, pad_id=pad_id)
    descend(model, opt, loss + weight * kl, lr=lr, clip=clip)
    return ce, float(kl.detach())


def run_settings(args: argparse.Namespace) -> dict:
    run = {k: getattr(args, k) for k in ARG_KEYS} | {"task_draw": TASK_DRAW}
    run["alpha"] = 2.0 * args.rank if args.alpha is None else args.alpha
    return run


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = run_settings(args)
    if args.distill_weight and args.objective != "one_block":
        raise SystemExit("--distill-weight needs --objective one_block (the teacher's target is exact only for the "
                         "leftmost masked position after a clean prefix)")
    model = LlamaDllm.from_checkpoint(args.base, rank=args.rank, alpha=run["alpha"], seed=args.seed)
    teacher = LlamaDllm.from_checkpoint(args.base, rank=0) if args.distill_weight else None
    tokenizer = Tokenizer.from_file(str(Path(args.base) / "tokenizer.json"))
    records = chat_data.load(args.chat_data, "train") if args.chat_share > 0 else []
    mix = Mix(tokenizer, tasks.SUITES[args.task_suite], records, chat_share=args.chat_share, system_share=args.system_share)
    started_from = init_from_adapter(model, args.init_adapter) if args.init_adapter and not args.resume else None
    opt = make_optimizer(model, lr=args.lr, weight_decay=args.weight_decay)
    step = resume(out, model, opt, run) if args.resume else 0
    pad = tokenizer.token_to_id("<|endoftext|>")
    began, last = time.perf_counter(), min(args.steps, args.until or args.steps)
    with (out / LOG_FILE).open("a") as log:
        if step == 0:
            log.write(json.dumps({"run": run, "base": Path(args.base).name, "init_adapter_sha256": started_from})
                      + "\n")
        bar = tqdm(range(step, last), initial=step, total=last, desc="finetune", dynamic_ncols=True)
        for step in bar:
            batch = make_batch(mix.examples(seed=args.seed, step=step, batch_size=args.batch_size),
                               block_size=model.shape.block_size, mask_id=model.shape.mask_id, pad_id=pad,
                               gen=torch.Generator().manual_seed(args.seed * 1_000_003 + step),
                               objective=args.objective)
            lr = lr_at(step, lr=args.lr, warmup=args.warmup, total=args.steps, min_ratio=args.min_lr_ratio)
            record = {"step": step + 1}
            if teacher is None:
                ce = train_step(model, opt, batch, lr=lr)
            else:
                ce, kl = distill_step(model, teacher, opt, batch, lr=lr, weight=args.distill_weight,
                                      pad_id=pad)
                record["kl"] = round(kl, 5)
            extra = {"kl": f"{record['kl']:.3f}"} if "kl" in record else {}
            bar.set_postfix(loss=f"{ce:.3f}", lr=f"{lr:.2e}", **extra)
            elapsed = time.perf_counter() - began
            log.write(json.dumps({**record, "loss": round(ce, 5), "lr": lr, "tokens": int(batch.input_ids.numel()),
                                  "seconds": round(elapsed, 2)}) + "\n")
            must_stop = stop_requested.is_set() or (args.max_minutes and elapsed > 60 * args.max_minutes)
            if (step + 1) % args.save_every == 0 or step + 1 == last or must_stop:
                save_state(out, model, opt, step + 1, run)
                log.flush()
            if must_stop:
                break
    return out


class StopRequest:
    """While installed, SIGTERM ends training after the current step, which is saved first (a bit-exact resume
    point); `uninstall` restores the previous handler."""

    def __init__(self) -> None:
        self._set, self._previous = False, None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True

    def install(self) -> None:
        self._set = False
        self._previous = signal.signal(signal.SIGTERM, lambda *_: self.set())

    def uninstall(self) -> None:
        signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)


stop_requested = StopRequest()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Fine-tune the converted SmolLM2 into a block-diffusion model (LoRA, CPU).")
    p.add_argument("--out", type=Path, required=True, help="run directory (train_state.pt, adapter, log)")
    p.add_argument("--base", type=Path, default=Path("models/smollm2-base"), help="the converted base checkpoint")
    p.add_argument("--chat-data", type=Path, default=chat_data.DATA_FILE)
    p.add_argument("--steps", type=int, default=3000, help="total optimizer steps (the cosine schedule's length)")
    p.add_argument("--until", type=int, default=0, help="stop after this step (0: --steps); the schedule still spans --steps")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--init-adapter", type=Path, default=None,
                   help="start a new run from this trained adapter (a run directory or its adapter.safetensors; "
                        "fresh optimizer and schedule); a later --resume of the run continues from its own state")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop (and save) after this much training time")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--task-suite", choices=tuple(tasks.SUITES), default=DEFAULT_SUITE,
                   help="the task families to train on (recorded in the served config.json)")
    p.add_argument("--chat-share", type=float, default=0.35, help="share of samples from the chat set")
    p.add_argument("--system-share", type=float, default=0.5, help="share of samples with the default system prompt")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--objective", choices=("one_block", "all_blocks"), default="one_block")
    p.add_argument("--distill-weight", type=float, default=0.0,
                   help="weight of the KL term from the frozen autoregressive base at the leftmost masked position "
                        "(0: off; one_block only)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    stop_requested.install()
    try:
        train(args)
    finally:
        stop_requested.uninstall()


if __name__ == "__main__":
    main()
