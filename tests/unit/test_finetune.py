"""Block-diffusion fine-tuning of the SmolLM2 conversion, on a tiny random model of the same layout (LLaDA2 dense,
SmolLM2's tokenizer): bit-exact resume, an adapter that merges into the served weights, and the data mix."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from sglang_focus.training import chat_data, convert_smollm2, finetune, tasks
from sglang_focus.training.checkpoints import MODELS_DIR
from sglang_focus.training.llama_dllm import LlamaDllm, block_causal_visibility

BASE = MODELS_DIR / "smollm2-base"  # built by `make setup`; only its tokenizer is used here
TINY = convert_smollm2.GgufShape(layers=2, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16,
                                  rope_theta=100000.0, rms_norm_eps=1e-5, vocab=49152)


def random_dense_weights(shape: convert_smollm2.GgufShape, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *size: torch.randn(*size, generator=gen) * 0.05  # noqa: E731
    h, q, kv = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    weights = {"model.word_embeddings.weight": rand(shape.vocab + 1, h), "model.norm.weight": torch.ones(h)}
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        weights.update({p + "input_layernorm.weight": torch.ones(h), p + "post_attention_layernorm.weight": torch.ones(h),
                        p + "attention.query_key_value.weight": rand(q + 2 * kv, h), p + "attention.dense.weight": rand(h, q),
                        p + "mlp.gate_proj.weight": rand(shape.intermediate, h),
                        p + "mlp.up_proj.weight": rand(shape.intermediate, h),
                        p + "mlp.down_proj.weight": rand(h, shape.intermediate)})
    return weights


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random checkpoint in the converted layout, with SmolLM2's tokenizer (mask token appended)."""
    out = tmp_path_factory.mktemp("tiny_dense")
    metadata = {"tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2, "tokenizer.ggml.padding_token_id": 2}
    (out / "config.json").write_text(json.dumps(convert_smollm2.llada2_dense_config(TINY, metadata)))
    save_file(random_dense_weights(TINY), str(out / "model.safetensors"))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(BASE / name, out / name)
    return out


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("chat") / "chat.jsonl"
    records = [{"prompt": f"Name {n} colors.", "response": "Red, blue and green.", "split": "train"} for n in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def run(out: Path, base: Path, chat: Path, *extra: str) -> None:
    finetune.main(["--out", str(out), "--base", str(base), "--chat-data", str(chat), "--rank", "4",
                   "--batch-size", "2", "--save-every", "2", "--threads", "1", *extra])


def test_resume_continues_bit_exactly(tiny_base, chat_file, tmp_path):
    run(tmp_path / "whole", tiny_base, chat_file, "--steps", "4")
    run(tmp_path / "split", tiny_base, chat_file, "--steps", "4", "--until", "2")
    run(tmp_path / "split", tiny_base, chat_file, "--steps", "4", "--resume")
    whole, split = (load_file(str(tmp_path / d / finetune.ADAPTER_FILE)) for d in ("whole", "split"))
    assert whole.keys() == split.keys()
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in whole.items() if k.endswith("lora_b"))
    with pytest.raises(SystemExit, match="lr"):
        run(tmp_path / "split", tiny_base, chat_file, "--steps", "4", "--resume", "--lr", "1e-3")


def test_adapter_merges_into_the_weights_the_server_loads(tiny_base, chat_file, tmp_path):
    """Base + adapter (LoRA applied on the fly) computes what the merged LLaDA2-layout weights compute."""
    run(tmp_path / "run", tiny_base, chat_file, "--steps", "2")
    adapter = tmp_path / "run" / finetune.ADAPTER_FILE
    config = json.loads((tiny_base / "config.json").read_text())
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "config.json").write_text(json.dumps(config))
    weights = load_file(str(tiny_base / "model.safetensors"))
    save_file(convert_smollm2.merge_adapter(weights, config, adapter), str(merged_dir / "model.safetensors"))
    with_adapter = LlamaDllm.from_checkpoint(tiny_base, rank=4)
    with_adapter.load_adapter_state(load_file(str(adapter)))
    merged = LlamaDllm.from_checkpoint(merged_dir, rank=0)
    ids = torch.tensor([[1, 4093, 198] + [49152] * 29 + [28, 29, 30] + [49152] * 29])
    visible = block_causal_visibility(64, 32)
    with torch.no_grad():
        a, b = (m.logits(m.hidden(ids, visible)) for m in (with_adapter, merged))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert convert_smollm2.adapter_run(adapter)["task_suite"] == finetune.DEFAULT_SUITE


def test_mix_is_a_function_of_seed_and_step_and_follows_its_shares(tiny_base, chat_file):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    records = chat_data.load(chat_file, "train")
    mix = finetune.Mix(tokenizer, ("sort", "walk"), records, chat_share=0.5, system_share=0.5)
    assert mix.examples(seed=1, step=3, batch_size=8) == mix.examples(seed=1, step=3, batch_size=8)
    assert mix.examples(seed=1, step=3, batch_size=8) != mix.examples(seed=1, step=4, batch_size=8)
    samples = [ex for step in range(50) for ex in mix.examples(seed=0, step=step, batch_size=8)]
    eos = tokenizer.token_to_id("<|im_end|>")
    assert all(ex.answer[-1] == eos for ex in samples)
    chat_answer = tokenizer.encode("Red, blue and green.").ids + [eos]
    system = tokenizer.encode(chat_data.chat_text("x")).ids[:3]
    chat_share = sum(ex.answer == chat_answer for ex in samples) / len(samples)
    system_share = sum(ex.prompt[:3] == system for ex in samples) / len(samples)
    assert 0.4 < chat_share < 0.6 and 0.4 < system_share < 0.6


def test_mix_draws_every_task_family_about_equally(tiny_base, chat_file, monkeypatch):
    """Every family of the suite is trained on, in about equal shares, whatever a step's number of task samples (a
    draw that started each step at the suite's first family never reached the last ones of tasks-all)."""
    from tokenizers import Tokenizer

    drawn = collections.Counter()
    real_generate = tasks.generate

    def counting_generate(*args, **kwargs):
        problems = real_generate(*args, **kwargs)
        drawn.update(p.task for p in problems)
        return problems

    monkeypatch.setattr(tasks, "generate", counting_generate)
    tokenizer = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    families = tasks.SUITES["tasks-all"]
    mix = finetune.Mix(tokenizer, families, chat_data.load(chat_file, "train"), chat_share=0.35, system_share=0.5)
    for step in range(300):
        mix.examples(seed=0, step=step, batch_size=8)
    total = sum(drawn.values())
    assert set(drawn) == set(families) and total > 1200
    assert all(0.6 < drawn[f] * len(families) / total < 1.5 for f in families), drawn


def test_a_state_saved_with_the_old_family_draw_is_not_resumed(tiny_base, chat_file, tmp_path):
    run(tmp_path / "old", tiny_base, chat_file, "--steps", "4", "--until", "2")
    state_path = tmp_path / "old" / finetune.STATE_FILE
    state = torch.load(state_path, weights_only=False)
    assert state["run"]["task_draw"] == finetune.TASK_DRAW
    del state["run"]["task_draw"]  # as saved before the draw was recorded
    torch.save(state, state_path)
    with pytest.raises(SystemExit, match="task_draw 'first_families' \\(now 'uniform'\\)"):
        run(tmp_path / "old", tiny_base, chat_file, "--steps", "4", "--resume")


def test_sigterm_stops_after_the_current_step_and_saves_it(tiny_base, chat_file, tmp_path, monkeypatch):
    real_step = finetune.train_step

    def step_then_sigterm(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(finetune, "train_step", step_then_sigterm)
    handler_before = signal.getsignal(signal.SIGTERM)
    run(tmp_path / "run", tiny_base, chat_file, "--steps", "4", "--save-every", "100")
    assert torch.load(tmp_path / "run" / finetune.STATE_FILE, weights_only=False)["step"] == 1
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_a_new_run_can_start_from_a_trained_adapter(tiny_base, chat_file, tmp_path):
    """--init-adapter loads the adapter before the first step (at learning rate 0 the new run's adapter is the old
    one, bit for bit) and records its sha256; a rank that does not match is refused by name."""
    run(tmp_path / "first", tiny_base, chat_file, "--steps", "2")
    first = tmp_path / "first" / finetune.ADAPTER_FILE
    run(tmp_path / "second", tiny_base, chat_file, "--steps", "1", "--lr", "0", "--init-adapter", str(tmp_path / "first"))
    old, new = load_file(str(first)), load_file(str(tmp_path / "second" / finetune.ADAPTER_FILE))
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)
    header = json.loads((tmp_path / "second" / finetune.LOG_FILE).read_text().splitlines()[0])
    assert header["init_adapter_sha256"] == convert_smollm2.sha256_of(first)
    with pytest.raises(SystemExit, match="rank 4"):
        finetune.main(["--out", str(tmp_path / "third"), "--base", str(tiny_base), "--chat-data", str(chat_file),
                       "--rank", "8", "--steps", "1", "--threads", "1", "--init-adapter", str(first)])
    with pytest.raises(SystemExit, match="no adapter"):
        run(tmp_path / "fourth", tiny_base, chat_file, "--steps", "1", "--init-adapter", str(tmp_path / "missing"))


def test_distillation_targets_the_autoregressive_base_at_the_leftmost_masked_position(tiny_base, chat_file):
    """The teacher's distribution is the causal base's next-token distribution given the clean prefix alone (nothing
    after it leaks in), compared with the student's at the leftmost masked position; padding positions are left out."""
    from tokenizers import Tokenizer

    from sglang_focus.training.train import IGNORE

    tokenizer = Tokenizer.from_file(str(tiny_base / "tokenizer.json"))
    mix = finetune.Mix(tokenizer, ("sort", "walk"), chat_data.load(chat_file, "train"), chat_share=0.5, system_share=0.5)
    student, teacher = LlamaDllm.from_checkpoint(tiny_base, rank=4), LlamaDllm.from_checkpoint(tiny_base, rank=0)
    with torch.no_grad():
        for _, param in student.trainable_named():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    pad = tokenizer.token_to_id("<|endoftext|>")
    batch = finetune.make_batch(mix.examples(seed=0, step=0, batch_size=6), block_size=32, mask_id=student.shape.mask_id,
                                pad_id=pad, gen=torch.Generator().manual_seed(0))
    with torch.no_grad():
        hidden = student.hidden(batch.input_ids, batch.visible, batch.positions)
        kl = finetune.distillation_kl(student, teacher, batch, hidden, pad_id=pad)
        expected = []
        for row in range(batch.input_ids.shape[0]):
            first = int((batch.targets[row] != IGNORE).nonzero()[0])
            if batch.targets[row, first] == pad:
                continue
            prefix = batch.input_ids[row, :first][None]
            causal = torch.ones(first, first, dtype=torch.bool).tril()
            t = torch.log_softmax(teacher.logits(teacher.hidden(prefix, causal))[0, -1, :-1], -1)
            s = torch.log_softmax(student.logits(hidden[row, first])[:-1], -1)
            expected.append((t.exp() * (t - s)).sum())
    assert expected and kl > 0
    torch.testing.assert_close(kl, torch.stack(expected).mean(), rtol=1e-4, atol=1e-5)


def test_a_distilled_run_logs_its_kl_and_resumes_older_states(tiny_base, chat_file, tmp_path):
    run(tmp_path / "run", tiny_base, chat_file, "--steps", "2", "--distill-weight", "0.5")
    lines = [json.loads(line) for line in (tmp_path / "run" / finetune.LOG_FILE).read_text().splitlines()[1:]]
    assert [line["step"] for line in lines] == [1, 2] and all(line["kl"] >= 0 for line in lines)
    with pytest.raises(SystemExit, match="one_block"):
        run(tmp_path / "other", tiny_base, chat_file, "--steps", "1", "--distill-weight", "0.5", "--objective", "all_blocks")
    # A state saved before the distillation option existed resumes as an undistilled run.
    run(tmp_path / "old", tiny_base, chat_file, "--steps", "4", "--until", "2")
    state_path = tmp_path / "old" / finetune.STATE_FILE
    state = torch.load(state_path, weights_only=False)
    del state["run"]["distill_weight"]
    torch.save(state, state_path)
    run(tmp_path / "old", tiny_base, chat_file, "--steps", "4", "--resume")
    assert torch.load(state_path, weights_only=False)["step"] == 4
