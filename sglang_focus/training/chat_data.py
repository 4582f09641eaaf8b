"""A small natural-chat data set for the SmolLM2 conversion, made here: templated prompts, answers written greedily by
the autoregressive SmolLM2-135M-Instruct itself.

    python -m sglang_focus.training.chat_data --base models/smollm2-base --out data/chat-smollm2.jsonl

Prompts come from templates and word lists (questions, instructions, short stories, lists, rewrites, sums), mixed
as evenly as the templates' sizes allow (`draw_prompts`: at most 100 from any template, 754 in all); each
is answered by the frozen base model in its own chat format (greedy, KV-cached, with transformers' Llama built from
the converted weights), up to `--max-new-tokens`; answers that do not end within that budget are dropped, so every
kept answer ends with `<|im_end|>`. A prompt's split is a fixed hash of its text (10 % held out), as for the task
problems. One JSON object per line: {"prompt", "response", "split"}.

Block-diffusion fine-tuning trains on the train split, so the converted model stays a chat model; the held-out
prompts measure FOCUS on real text (`bench.chat_quality`).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import random
import time
from pathlib import Path
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

DATA_FILE = Path(__file__).resolve().parents[2] / "data" / "chat-smollm2.jsonl"  # the committed data set
HELDOUT_PERCENT = 10
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

COUNTRIES = ("France", "Germany", "Spain", "Italy", "Japan", "Canada", "Brazil", "Egypt", "India", "Mexico",
             "Norway", "Greece", "Kenya", "Peru", "Poland", "Portugal", "Sweden", "Turkey", "Chile", "Ireland",
             "Australia", "China", "Argentina", "Nigeria", "Finland", "Austria", "Vietnam", "Morocco", "Denmark",
             "Thailand", "Colombia", "Hungary", "Iceland", "Cuba", "Belgium", "Switzerland", "Russia", "Indonesia")
ANIMALS = ("cat", "dog", "owl", "fox", "horse", "rabbit", "turtle", "dolphin", "bee", "penguin", "lion", "goat",
           "parrot", "elephant", "frog", "whale", "squirrel", "wolf", "duck", "bear", "tiger", "camel", "shark",
           "eagle", "mouse", "giraffe", "octopus", "snail", "zebra", "deer", "bat", "crab", "koala", "panda")
TOPICS = ("the sea", "the moon", "autumn", "a quiet city", "rain", "the mountains", "a garden", "winter",
          "the stars", "a river", "friendship", "a busy market", "the desert", "a library", "morning coffee",
          "spring", "a forest", "the sun", "snow", "a small village", "the wind", "a train journey", "a lighthouse",
          "summer nights", "an old bridge")
ACTIVITIES = ("learning to cook", "staying healthy", "saving money", "studying for exams", "sleeping better",
              "learning a language", "running a marathon", "keeping a plant alive", "writing a story",
              "travelling on a budget", "working from home", "making friends", "reading more books",
              "drinking more water", "learning to swim", "keeping a room tidy", "starting a garden",
              "speaking in public", "riding a bike", "taking better photos")
THINGS = ("a volcano", "a rainbow", "a computer", "a bicycle", "a battery", "a cloud", "a bridge", "an island",
          "a telescope", "a vaccine", "a calendar", "a compass", "a magnet", "an orchestra", "a library",
          "a glacier", "a map", "a clock", "a thermometer", "a microscope", "an umbrella", "a satellite",
          "a desert", "a museum", "a robot", "a forest", "an engine", "a dictionary", "a lighthouse", "a piano")
CATEGORIES = ("fruits", "colors", "sports", "musical instruments", "vegetables", "planets", "kitchen tools",
              "farm animals", "board games", "flowers", "jobs", "countries in Europe", "things in a classroom",
              "birds", "trees", "vehicles", "animals that live in the sea", "things you wear in winter",
              "breakfast foods", "school subjects", "tools in a toolbox", "rivers", "capital cities", "insects")
SENTENCES = ("The dog runs to the park.", "She writes a letter to her friend.", "We eat dinner at seven.",
             "The children play in the garden.", "He reads a book every night.", "The train leaves at noon.",
             "I walk to school with my sister.", "They build a small house near the lake.",
             "The baker sells fresh bread.", "My father drives a red car.", "The students listen to the teacher.",
             "The cat sleeps on the sofa.", "We visit our grandmother on Sunday.", "The river flows to the sea.",
             "He plays the guitar in a band.", "The sun rises over the hills.", "She paints the door blue.",
             "They sing a song at the party.", "The farmer feeds the cows.", "I drink tea in the morning.")
GOALS = ("fly", "find a friend", "cross the river", "see the ocean", "win a race", "learn to sing",
         "find its way home", "build a house", "climb a mountain", "stay awake all night")

PER_TEMPLATE = 100  # no template gives more (the arithmetic ones could fill the whole set)
# Every template asks for a short answer (one or two sentences, a short list): most fit 80 new tokens.
TEMPLATES = (
    ("What is the capital of {country}?", {"country": COUNTRIES}),
    ("Tell me one interesting fact about {country} in one sentence.", {"country": COUNTRIES}),
    ("What language do people speak in {country}?", {"country": COUNTRIES}),
    ("Give me three short tips for {activity}.", {"activity": ACTIVITIES}),
    ("What is the first step in {activity}?", {"activity": ACTIVITIES}),
    ("Write one sentence about a {animal}.", {"animal": ANIMALS}),
    ("Where does a {animal} live? Answer in one sentence.", {"animal": ANIMALS}),
    ("What does a {animal} eat?", {"animal": ANIMALS}),
    ("Explain what {thing} is in one sentence.", {"thing": THINGS}),
    ("What is {thing} used for? Answer briefly.", {"thing": THINGS}),
    ("List four {category}.", {"category": CATEGORIES}),
    ("Name three {category}.", {"category": CATEGORIES}),
    ("Write a two-line poem about {topic}.", {"topic": TOPICS}),
    ("Describe {topic} in two sentences.", {"topic": TOPICS}),
    ("Rewrite this sentence in the past tense: {sentence}", {"sentence": SENTENCES}),
    ("Rewrite this sentence as a question: {sentence}", {"sentence": SENTENCES}),
    ("Tell me a two-sentence story about a {animal} who wants to {goal}.", {"animal": ANIMALS, "goal": GOALS}),
    ("What is {a} plus {b}?", {"a": tuple(range(2, 60)), "b": tuple(range(2, 40))}),
    ("What is {a} times {b}?", {"a": tuple(range(2, 13)), "b": tuple(range(2, 13))}),
)


def split_of(prompt: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(f"chat:{prompt}".encode()).digest()[:8], "big") % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def all_prompts() -> list[str]:
    """Every prompt the templates make, each once, in a fixed order."""
    prompts = []
    for template, slots in TEMPLATES:
        names = list(slots)
        for values in itertools.product(*(slots[n] for n in names)):
            prompts.append(template.format(**dict(zip(names, values))))
    return prompts


def draw_prompts(n: int, seed: int, per_template: int = PER_TEMPLATE) -> list[str]:
    """Up to `n` distinct prompts, the templates as evenly mixed as their sizes allow: round robin over the
    templates (random order within each), a template leaving the rotation when its fills run out or it gave
    `per_template`. A prefix of the list for a larger `n` is the list for a smaller one."""
    rng = random.Random(f"chat-prompts:{seed}")
    by_template = []
    for template, slots in TEMPLATES:
        names = list(slots)
        filled = [template.format(**dict(zip(names, values)))
                  for values in itertools.product(*(slots[k] for k in names))]
        rng.shuffle(filled)
        by_template.append(filled[:per_template])
    out: list[str] = []
    for column in itertools.zip_longest(*by_template):
        out.extend(p for p in column if p is not None)
        if len(out) >= n:
            break
    return out[:n]


def chat_text(user: str, *, system: bool = True) -> str:
    """SmolLM2's chat format for one user turn with the assistant's turn opened (its template adds the default
    system prompt when the conversation has none)."""
    head = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def autoregressive_model(base: Path):
    """transformers' LlamaForCausalLM holding the converted base's float32 weights (mask row dropped)."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((base / "config.json").read_text())
    w = load_file(str(base / "model.safetensors"))
    vocab = cfg["mask_token_id"]  # the original vocabulary: the mask token is appended after it
    config = LlamaConfig(vocab_size=vocab, hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                         num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                         num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
                         rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"], tie_word_embeddings=True,
                         max_position_embeddings=cfg["max_position_embeddings"], bos_token_id=cfg["bos_token_id"],
                         eos_token_id=cfg["eos_token_id"], pad_token_id=cfg["pad_token_id"])
    q_rows = cfg["num_attention_heads"] * cfg["head_dim"]
    kv_rows = cfg["num_key_value_heads"] * cfg["head_dim"]
    state = {"model.embed_tokens.weight": w["model.word_embeddings.weight"][:vocab], "model.norm.weight": w["model.norm.weight"]}
    for i in range(cfg["num_hidden_layers"]):
        p, t = f"model.layers.{i}.", f"model.layers.{i}."
        q, k, v = w[p + "attention.query_key_value.weight"].split([q_rows, kv_rows, kv_rows])
        state.update({t + "self_attn.q_proj.weight": q, t + "self_attn.k_proj.weight": k,
                      t + "self_attn.v_proj.weight": v, t + "self_attn.o_proj.weight": w[p + "attention.dense.weight"],
                      t + "mlp.gate_proj.weight": w[p + "mlp.gate_proj.weight"],
                      t + "mlp.up_proj.weight": w[p + "mlp.up_proj.weight"],
                      t + "mlp.down_proj.weight": w[p + "mlp.down_proj.weight"],
                      t + "input_layernorm.weight": w[p + "input_layernorm.weight"],
                      t + "post_attention_layernorm.weight": w[p + "post_attention_layernorm.weight"]})
    model = LlamaForCausalLM(config)
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model.float().eval()


@torch.inference_mode()
def answer_all(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
               eos_id: int, pad_id: int) -> Iterator[str | None]:
    """Greedy answers in prompt order (text without `<|im_end|>`), None where the answer does not end in time."""
    for i in tqdm(range(0, len(prompts), batch_size), desc="answering", unit="batch", dynamic_ncols=True):
        encoded = [tokenizer.encode(chat_text(p)).ids for p in prompts[i:i + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded])  # left padding
        attention = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        out = model.generate(input_ids=ids, attention_mask=attention, max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=eos_id, pad_token_id=pad_id)[:, width:].tolist()
        for row in out:
            yield tokenizer.decode(row[:row.index(eos_id)], skip_special_tokens=False) if eos_id in row else None


def build(base: Path, out: Path, *, n: int, seed: int, max_new_tokens: int, batch_size: int) -> dict:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(base / "tokenizer.json"))
    eos, pad = tokenizer.token_to_id("<|im_end|>"), tokenizer.token_to_id("<|endoftext|>")
    model = autoregressive_model(base)
    prompts = draw_prompts(n, seed)
    kept = dropped = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for prompt, response in zip(prompts, answer_all(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                                        batch_size=batch_size, eos_id=eos, pad_id=pad)):
            if response is None or not response.strip():
                dropped += 1
                continue
            f.write(json.dumps({"prompt": prompt, "response": response, "split": split_of(prompt)}) + "\n")
            kept += 1
    return {"kept": kept, "dropped": dropped}


def load(path: Path, split: str) -> list[dict]:
    """The records of `split` ("train" or "heldout") in file order."""
    return [r for r in map(json.loads, Path(path).read_text().splitlines()) if r["split"] == split]


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Make the chat data set: templated prompts answered by SmolLM2 itself.")
    p.add_argument("--base", type=Path, default=Path("models/smollm2-base"), help="the converted base checkpoint")
    p.add_argument("--out", type=Path, default=DATA_FILE)
    p.add_argument("--n", type=int, default=1000, help="prompts to answer (at most what the templates give)")
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    began = time.perf_counter()
    counts = build(args.base, args.out, n=args.n, seed=args.seed, max_new_tokens=args.max_new_tokens,
                   batch_size=args.batch_size)
    print(f"{args.out}: {counts['kept']} answers kept, {counts['dropped']} dropped (no end within "
          f"{args.max_new_tokens} tokens), {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
