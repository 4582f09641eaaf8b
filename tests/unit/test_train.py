"""Block-diffusion training: the noising objective, the loss going down, and an SGLang-loadable SDAR checkpoint."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sglang_focus.training import tasks, tiny_models, train

BLOCK = 16
TOY = ["--block-size", str(BLOCK), "--layers", "2", "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--batch-size", "8", "--warmup", "2",
       "--lr", "3e-3", "--threads", "1", "--save-every", "2"]
REFERENCE = Path(__file__).parents[1] / "e2e" / "test_reference_decoder.py"


@pytest.fixture(autouse=True)
def one_thread():
    """Toy matmuls are fastest on one thread, and `train.train` sets the global count: restore it after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer_and_special(tmp_path_factory):
    return train.prepare_tokenizer(tmp_path_factory.mktemp("tok"), suite=tasks.DEFAULT_SUITE, seed=0, reuse=False)


@pytest.fixture(scope="module")
def toy_model(tokenizer_and_special):
    tokenizer, special = tokenizer_and_special
    torch.manual_seed(0)
    return train.SdarLM(train.model_config(train.parse_args(["--out", "x", *TOY]), tokenizer.get_vocab_size(), special))


def toy_batch(tokenizer, special, step: int, objective: str = "one_block") -> train.DiffusionBatch:
    examples = train.training_examples(tokenizer, suite=tasks.DEFAULT_SUITE, seed=0, step=step, batch_size=8)
    return train.make_batch(examples, block_size=BLOCK, mask_id=special["mask"], pad_id=special["pad"],
                            gen=torch.Generator().manual_seed(step), objective=objective)


def test_any_order_answers_vary_between_steps_and_repeat_on_resume(tokenizer_and_special):
    """Training draws a random valid order for `pick`/`story` answers, as a function of (seed, step) only."""
    tokenizer, _ = tokenizer_and_special
    draw = lambda step: train.training_examples(tokenizer, suite=tasks.NEWEST_SUITE, seed=0, step=step,  # noqa: E731
                                                batch_size=40)
    assert draw(3) == draw(3)
    problems = tasks.generate("train", 40, seed="0:3", tasks=tasks.SUITES[tasks.NEWEST_SUITE])
    answers = [tokenizer.decode(ex.answer, skip_special_tokens=True) for ex in draw(3)]
    assert all(tasks.is_correct(p, a) for p, a in zip(problems, answers))
    free = [(p, a) for p, a in zip(problems, answers) if p.task in ("pick", "story")]
    assert free and any(tasks.normalize(a) != tasks.normalize(p.answer) for p, a in free)


def test_two_stream_visibility():
    visible = train.two_stream_visibility(4, 2).int().tolist()
    assert visible == [[1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0],  # noisy block 0: itself
                       [0, 0, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 0, 0],  # noisy block 1: itself + clean block 0
                       [0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0, 0],  # clean copy: block-causal
                       [0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1]]


def test_visibility_is_block_causal():
    visible = train.block_causal_visibility(5, 2)
    assert visible.tolist() == [[True, True, False, False, False], [True, True, False, False, False],
                                [True, True, True, True, False], [True, True, True, True, False],
                                [True, True, True, True, True]]


def test_noising_masks_only_answer_tokens_of_one_block(tokenizer_and_special):
    tokenizer, special = tokenizer_and_special
    gen = torch.Generator().manual_seed(0)
    for problem in tasks.generate("train", 200, seed=5):
        ex = train.Example(*tasks.encode_problem(tokenizer, problem))
        clean = ex.prompt + ex.answer + [special["pad"]] * (-(len(ex.prompt) + len(ex.answer)) % BLOCK)
        sample = train.noise_example(ex, block_size=BLOCK, mask_id=special["mask"], pad_id=special["pad"], gen=gen)
        noisy, targets, t, maskable = sample.noisy, sample.targets, sample.ratio[-1], sample.maskable
        assert len(noisy) % BLOCK == 0 and len(noisy) > len(ex.prompt)  # cut after a block holding answer tokens
        start = len(noisy) - BLOCK
        masked = [j for j, tok in enumerate(noisy) if tok == special["mask"]]
        assert masked and all(j >= max(start, len(ex.prompt)) for j in masked)
        assert noisy[:start] == clean[:start]  # earlier blocks clean, prompt untouched
        assert [targets[j] for j in masked] == [clean[j] for j in masked]
        assert all(targets[j] == train.IGNORE for j in range(len(noisy)) if j not in masked)
        assert train.MIN_MASK_RATIO <= t <= 1 and maskable == len(noisy) - max(start, len(ex.prompt))


def test_all_blocks_layout_sees_what_one_block_decoding_sees(tokenizer_and_special, toy_model):
    """Each noisy block of the two-stream batch gets the hidden states it would get alone after clean blocks."""
    tokenizer, special = tokenizer_and_special
    ex = train.Example(*tasks.encode_problem(tokenizer, tasks.generate("train", 5, seed=0)[4]))
    batch = train.make_batch([ex], block_size=BLOCK, mask_id=special["mask"], pad_id=special["pad"],
                             gen=torch.Generator().manual_seed(0), objective="all_blocks")
    width = batch.input_ids.shape[1] // 2
    noisy, clean = batch.input_ids[0, :width], batch.input_ids[0, width:]
    with torch.no_grad():
        together = toy_model.hidden(batch.input_ids, batch.visible, batch.positions)[0]
        for block in train.answer_blocks(ex, BLOCK):
            end = (block + 1) * BLOCK
            alone_ids = torch.cat([clean[:end - BLOCK], noisy[end - BLOCK:end]])[None]
            alone = toy_model.hidden(alone_ids, train.block_causal_visibility(end, BLOCK))[0]
            torch.testing.assert_close(together[end - BLOCK:end], alone[-BLOCK:], rtol=1e-5, atol=1e-5)
    assert (batch.targets[0, width:] == train.IGNORE).all() and (batch.targets[0, :width] != train.IGNORE).any()


@pytest.mark.parametrize("objective", ["one_block", "all_blocks"])
def test_a_few_steps_on_a_toy_config_decrease_the_loss(tokenizer_and_special, objective):
    tokenizer, special = tokenizer_and_special
    torch.manual_seed(0)
    model = train.SdarLM(train.model_config(train.parse_args(["--out", "x", *TOY]), tokenizer.get_vocab_size(),
                                            special))
    opt = train.make_optimizer(model, lr=3e-3, weight_decay=0.0)
    losses = [train.train_step(model, opt, toy_batch(tokenizer, special, step, objective=objective), lr=3e-3)
              for step in range(24)]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 1.0, losses


@pytest.mark.parametrize("objective", ["one_block", "all_blocks"])
def test_inverse_t_weighting_is_a_finite_loss(tokenizer_and_special, toy_model, objective):
    tokenizer, special = tokenizer_and_special
    loss, ce = train.diffusion_loss(toy_model, toy_batch(tokenizer, special, 0, objective), weighting="inv_t")
    assert torch.isfinite(loss) and ce > 0


def test_checkpoint_has_sglang_sdar_weight_names_and_config(tmp_path):
    out = tmp_path / "ckpt"
    train.train(train.parse_args(["--out", str(out), "--steps", "2", *TOY]))
    cfg = json.loads((out / "config.json").read_text())
    expected = tiny_models.random_sdar_weights(cfg, seed=0)
    weights = load_file(str(out / "model.safetensors"))
    assert {k: tuple(v.shape) for k, v in weights.items()} == {k: tuple(v.shape) for k, v in expected.items()}
    assert all(v.dtype == torch.float32 for v in weights.values())
    reference_cfg = tiny_models.sdar_config(vocab_size=cfg["vocab_size"], special={"bos": 1, "eos": 2, "pad": 0,
                                                                                   "mask": 3})
    assert set(cfg) == set(reference_cfg) | {tasks.SUITE_CONFIG_KEY}
    assert cfg["architectures"] == ["SDARForCausalLM"] and cfg["model_type"] == "qwen3"
    assert cfg["tie_word_embeddings"] is True and cfg["torch_dtype"] == "float32" and cfg["block_size"] == BLOCK
    assert cfg["mask_token_id"] == 3 and cfg["num_hidden_layers"] == 2 and cfg["hidden_size"] == 32
    assert tasks.config_suite(cfg) == tasks.SUITES[tasks.NEWEST_SUITE]  # what `train` trains on by default
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (out / name).exists(), name


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.train(train.parse_args(["--out", str(straight), "--steps", "4", *TOY]))
    train.train(train.parse_args(["--out", str(resumed), "--steps", "4", "--max-minutes", "1e-9", *TOY]))
    assert torch.load(resumed / train.STATE_FILE, weights_only=False)["step"] == 1  # stopped early, saved
    train.train(train.parse_args(["--out", str(resumed), "--steps", "4", "--resume", *TOY]))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (resumed / train.LOG_FILE).read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_until_stops_early_on_the_full_schedule_and_resume_extends_it(tmp_path):
    straight, staged = tmp_path / "straight", tmp_path / "staged"
    train.train(train.parse_args(["--out", str(straight), "--steps", "4", *TOY]))
    train.train(train.parse_args(["--out", str(staged), "--steps", "4", "--until", "2", *TOY]))
    assert torch.load(staged / train.STATE_FILE, weights_only=False)["step"] == 2
    train.train(train.parse_args(["--out", str(staged), "--steps", "4", "--resume", *TOY]))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(staged / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference_decoder():
    """The independent plain-PyTorch decoder the e2e suite checks against stock SGLang, token for token."""
    spec = importlib.util.spec_from_file_location("_sdar_reference_decoder", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_model_and_generate_match_the_sglang_checked_reference(tmp_path, reference_decoder):
    ckpt = tiny_models.build_tiny_sdar(tmp_path / "tiny")
    model, _ = train.load_checkpoint(ckpt)
    ref = reference_decoder.TinySdar(ckpt)
    ids = torch.randint(4, 512, (37,), generator=torch.Generator().manual_seed(0)).tolist()
    with torch.no_grad():
        ours = model.logits(model.hidden(torch.tensor([ids]), train.block_causal_visibility(len(ids), BLOCK)))[0]
    torch.testing.assert_close(ours, reference_decoder.model_logits(ref, ids), rtol=1e-4, atol=1e-4)
    for length in (5, 16, 23):
        prompt = ids[:length]
        got = train.block_diffusion_generate(model, prompt, threshold=0.8, max_new_tokens=32)
        assert got.ids == reference_decoder.reference_generate(ref, prompt, 32, 0.8)
        blocks = -(-(length + 32) // BLOCK) - length // BLOCK  # whole blocks from the one holding the prompt tail
        assert got.blocks == blocks and got.decoded == blocks * BLOCK - length % BLOCK


def test_init_from_fine_tunes_a_checkpoint_on_another_suite_with_its_tokenizer(tmp_path):
    """--init-from starts from the exported weights (at lr 0 they stay bit-equal), keeps the architecture and
    tokenizer, records the new suite, and refuses architecture flags it would ignore."""
    base, tuned = tmp_path / "base", tmp_path / "tuned"
    train.train(train.parse_args(["--out", str(base), "--steps", "2", *TOY]))
    train.train(train.parse_args(["--out", str(tuned), "--init-from", str(base), "--task-suite", "tasks-v3",
                                  "--steps", "2", "--lr", "0", "--threads", "1", "--batch-size", "8"]))
    a, b = load_file(str(base / "model.safetensors")), load_file(str(tuned / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    base_cfg, tuned_cfg = (json.loads((d / "config.json").read_text()) for d in (base, tuned))
    assert tuned_cfg == {**base_cfg, tasks.SUITE_CONFIG_KEY: "tasks-v3"}
    assert (tuned / "tokenizer.json").read_text() == (base / "tokenizer.json").read_text()
    log = [json.loads(line) for line in (tuned / train.LOG_FILE).read_text().splitlines()]
    assert log[0] == {"init_from": "base", "task_suite": "tasks-v3"} and [r["step"] for r in log[1:]] == [1, 2]
    with pytest.raises(SystemExit):
        train.parse_args(["--out", str(tuned), "--init-from", str(base), "--layers", "4"])


def test_init_from_then_resume_reproduces_an_uninterrupted_fine_tune(tmp_path):
    base, straight, resumed = tmp_path / "base", tmp_path / "straight", tmp_path / "resumed"
    train.train(train.parse_args(["--out", str(base), "--steps", "2", *TOY]))
    tune = ["--init-from", str(base), "--task-suite", "tasks-v3", "--steps", "4", "--threads", "1", "--batch-size",
            "8", "--warmup", "2", "--save-every", "2"]
    train.train(train.parse_args(["--out", str(straight), *tune]))
    train.train(train.parse_args(["--out", str(resumed), *tune, "--until", "2"]))
    train.train(train.parse_args(["--out", str(resumed), *tune, "--resume"]))
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.norm.weight"], load_file(str(base / "model.safetensors"))["model.norm.weight"])


def test_device_flag_refuses_a_device_this_machine_lacks_by_name(capsys):
    with pytest.raises(SystemExit):
        train.parse_args(["--out", "x", "--device", "gpu"])
    assert "--device gpu" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            train.parse_args(["--out", "x", "--device", "cuda"])
        assert "--device cuda" in capsys.readouterr().err


def test_batches_move_to_the_training_device_whole(tokenizer_and_special):
    """Every tensor of a batch goes to the device (meta here: no data, only placement); counts stay numbers."""
    tokenizer, special = tokenizer_and_special
    for objective in ("one_block", "all_blocks"):
        moved = train.batch_to(toy_batch(tokenizer, special, 0, objective), "meta")
        assert all(getattr(moved, f).is_meta for f in moved._fields if isinstance(getattr(moved, f), torch.Tensor))
        assert isinstance(moved.maskable, float) and moved.maskable > 0
