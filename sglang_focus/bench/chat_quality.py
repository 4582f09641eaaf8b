"""Chat quality of stock LowConfidence, the delayed cache alone and FOCUS at the same threshold, on the held-out
chat prompts, through real servers, scored by the autoregressive model the conversion started from.

    python -m sglang_focus.bench.chat_quality [--model-path models/smollm2-dllm] [--teacher models/smollm2-base]
        [--n 51] [--threshold 0.8] [--arms stock delayed focus] [--max-new-tokens 96] [--out DIR]

Each arm is served in turn (`sglang_focus.bench.arms`, as in bench.accuracy) and answers the held-out prompts of
`data/chat-smollm2.jsonl` in SmolLM2's chat format (system prompt included, as its chat template writes it), sent
as token ids. A response is the output up to and including its first end marker (`<|im_end|>` or
`<|endoftext|>`); one without a marker is unfinished and scored as far as it goes.

The score is the teacher's log-likelihood per token: the frozen autoregressive SmolLM2-135M-Instruct (the base
checkpoint, run by transformers' Llama in float32) scores every response token given the prompt and the response
before it; the table reports the token-weighted mean (total log-likelihood over total tokens) per arm, its change
relative to stock's, the share of responses identical to stock's, the finished share and the decoding counters. A
reference row scores the teacher's own greedy answers (the data set's held-out responses). `--out DIR` writes
`DIR/chat_quality.json` with every response.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tokenizers import Tokenizer

from sglang_focus.bench import arms, audit
from sglang_focus.bench.accuracy import add_arm_run_flags, resolve_dtype, run_arm
from sglang_focus.bench.local_server import ServerStartError
from sglang_focus.training import chat_data
from sglang_focus.training.checkpoints import SMOLLM2_BASE, SMOLLM2_DLLM

END_MARKERS = ("<|im_end|>", "<|endoftext|>")
TEACHER_ROW = "teacher"  # the reference row: the autoregressive model's own answers


@dataclass(frozen=True)
class Response:
    """One response as scored: its token ids (through the end marker when finished) and its text (without it)."""

    ids: tuple[int, ...]
    text: str
    finished: bool


def cut_response(tokenizer: Tokenizer, output_ids: Sequence[int], end_ids: set[int]) -> Response:
    """The response in `output_ids`: everything up to and including the first end id (finished), else all of it."""
    ids = list(output_ids)
    end = next((i for i, t in enumerate(ids) if t in end_ids), None)
    body = ids if end is None else ids[:end]
    return Response(ids=tuple(ids if end is None else ids[:end + 1]),
                    text=tokenizer.decode(body, skip_special_tokens=False), finished=end is not None)


def teacher_log_likelihoods(teacher, prompts: Sequence[Sequence[int]],
                            responses: Sequence[Sequence[int]]) -> list[float]:
    """The summed log-probability of each response under the autoregressive `teacher` (a transformers causal LM),
    each token given its prompt and the response before it; 0.0 for an empty response."""
    import torch

    vocab = teacher.config.vocab_size
    sums = []
    with torch.inference_mode():
        for prompt, response in zip(prompts, responses):
            if not response:
                sums.append(0.0)
                continue
            if max(response) >= vocab:
                raise ValueError(f"response token {max(response)} is outside the teacher's vocabulary ({vocab})")
            ids = torch.tensor([list(prompt) + list(response)])
            logits = teacher(ids).logits[0, len(prompt) - 1:-1].float()
            picked = torch.log_softmax(logits, dim=-1).gather(-1, torch.tensor(response)[:, None])
            sums.append(float(picked.sum()))
    return sums


def quality_fields(log_likelihoods: Sequence[float], responses: Sequence[Response]) -> dict:
    """Token-weighted teacher log-likelihood per token, finished share and mean length of a set of responses."""
    tokens = sum(len(r.ids) for r in responses)
    return {"ll_per_token": sum(log_likelihoods) / tokens if tokens else None, "tokens": tokens,
            "mean_tokens": tokens / len(responses), "finished": sum(r.finished for r in responses) / len(responses)}


def add_comparisons(records: Sequence[dict], responses: dict[str, list[Response]]) -> None:
    """Set each arm record's `ll_change_vs_stock` (relative change of ll_per_token against stock's; positive =
    the teacher likes it more) and `identical_to_stock` (share of responses with the same ids), None without stock."""
    stock = next((r for r in records if r["arm"] == "stock"), None)
    for r in records:
        comparable = stock is not None and r["arm"] in responses and stock["ll_per_token"]
        r["ll_change_vs_stock"] = ((r["ll_per_token"] - stock["ll_per_token"]) / abs(stock["ll_per_token"])
                                   if comparable and r["ll_per_token"] is not None else None)
        r["identical_to_stock"] = (sum(a.ids == b.ids for a, b in zip(responses[r["arm"]], responses["stock"]))
                                   / len(responses["stock"]) if comparable else None)


def format_table(records: Sequence[dict]) -> str:
    """Plain-text table, one row per arm plus the teacher's reference row."""
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    columns = ["arm", "LL/token", "vs stock", "same as stock", "finished", "tokens/resp", "tok/fwd", "kept",
               "tok/s"]
    rows = [[r["arm"], fmt(r["ll_per_token"], ".3f"), fmt(r.get("ll_change_vs_stock"), "+.1%"),
             fmt(r.get("identical_to_stock"), ".0%"), f"{r['finished']:.0%}", f"{r['mean_tokens']:.1f}",
             fmt(r.get("tokens_per_forward"), ".2f"), fmt(r.get("masked_kept_ratio"), ".2f"),
             fmt(r.get("output_tokens_per_s"), ".1f")] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, rows)])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sglang_focus.bench.chat_quality",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", type=Path, default=SMOLLM2_DLLM, help="the block-diffusion chat model to serve")
    p.add_argument("--teacher", type=Path, default=SMOLLM2_BASE,
                   help="the autoregressive base checkpoint that scores the responses")
    p.add_argument("--data", type=Path, default=chat_data.DATA_FILE, help="chat data set (its held-out split is asked)")
    p.add_argument("--n", type=int, default=None, help="held-out prompts to ask (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=96)
    add_arm_run_flags(p)
    p.add_argument("--out", type=Path, default=None, help="write OUT/chat_quality.json")
    args = p.parse_args(argv)
    resolve_dtype(args)
    for flag, path, wanted in (("--model-path", args.model_path, "tokenizer.json"),
                               ("--teacher", args.teacher, "model.safetensors"), ("--data", args.data, None)):
        if not (path / wanted if wanted else path).exists():
            p.error(f"{flag} {path}: no {wanted or 'such file'} (run `make setup` to build the SmolLM2 checkpoints)")
    if args.n is not None and args.n < 1:
        p.error("--n must be at least 1")
    args.arms = arms.chosen_arms(args)
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    args.log_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = Tokenizer.from_file(str(args.model_path / "tokenizer.json"))
    end_ids = {tokenizer.token_to_id(m) for m in END_MARKERS}
    held_out = chat_data.load(args.data, "heldout")[:args.n]
    prompts = [tokenizer.encode(chat_data.chat_text(r["prompt"])).ids for r in held_out]
    payloads = [{"input_ids": ids, "sampling_params": {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}}
                for ids in prompts]
    cfg_dir, records, responses = arms.config_dir(), [], {}
    for arm in args.arms:
        try:
            replies, seconds = run_arm(arm, args, payloads, cfg_dir)
        except (ServerStartError, arms.BenchRequestError) as err:
            sys.exit(f"bench.chat_quality: error: {arm} arm: {err}")
        responses[arm] = [cut_response(tokenizer, r["output_ids"], end_ids) for r in replies]
        output_tokens = sum(r["meta_info"]["completion_tokens"] for r in replies)
        records.append({"arm": arm, "threshold": args.threshold, "alpha": arms.arm_alpha(arm, args.alpha),
                        **arms.decoding_fields(replies), **audit.audit_fields(replies), "seconds": seconds,
                        "output_tokens_per_s": output_tokens / seconds if seconds else None})
    im_end = tokenizer.token_to_id("<|im_end|>")
    responses[TEACHER_ROW] = [Response(ids=(*tokenizer.encode(r["response"]).ids, im_end), text=r["response"],
                                       finished=True) for r in held_out]
    records.append({"arm": TEACHER_ROW})
    print(f"scoring {len(records) * len(prompts)} responses with the autoregressive teacher {args.teacher}",
          flush=True)
    teacher = chat_data.autoregressive_model(args.teacher)
    for record in records:
        batch = responses[record["arm"]]
        record.update(quality_fields(teacher_log_likelihoods(teacher, prompts, [r.ids for r in batch]), batch))
    add_comparisons(records, responses)
    result = {"model": args.model_path.name, "teacher": args.teacher.name, "arms": args.arms,
              "threshold": args.threshold, "alpha": args.alpha, **arms.resolved_focus_options(args),
              "max_new_tokens": args.max_new_tokens, "max_running": args.max_running, "dtype": args.dtype,
              "n": len(prompts), "date": time.strftime("%Y-%m-%d"), "records": records,
              "hardware": arms.hardware(),
              "responses": [{"prompt": r["prompt"], **{arm: responses[arm][i].text for arm in responses}}
                            for i, r in enumerate(held_out)]}
    print(f"\n{args.model_path.name}: {len(prompts)} held-out chat prompts, threshold {args.threshold}, alpha "
          f"{args.alpha} (focus arm), dtype {args.dtype}; LL/token = the autoregressive teacher's mean "
          "log-likelihood per response token (higher is better)")
    print(format_table(records))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "chat_quality.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out / 'chat_quality.json'}")
    return result


if __name__ == "__main__":
    main()
