"""training.loss_breakdown: masked cross-entropy per task and token kind, on the bundled checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from sglang_focus.training import loss_breakdown, tasks

BUNDLED = Path(__file__).resolve().parents[2] / "models" / "sdar-tasks"


def test_token_kinds_split_digits_end_and_the_rest():
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(BUNDLED / "tokenizer.json"))
    ids = tokenizer.encode("7+3=0").ids + [2, 0]
    kinds = loss_breakdown.token_kinds(tokenizer, ids, end_ids={0, 2})
    assert kinds == ["digit", "other", "digit", "other", "digit", "end", "end"]


def test_breakdown_covers_every_task_of_the_suite_and_writes_json(tmp_path, capsys):
    table = loss_breakdown.main(["--model-path", str(BUNDLED), "--n", "1", "--out", str(tmp_path / "t.json")])
    assert set(table) == {*tasks.suite_of(BUNDLED), "all"}
    assert all(cell["nats"] >= 0 and cell["tokens"] > 0 for kinds in table.values() for cell in kinds.values())
    assert sum(table["all"][k]["tokens"] for k in table["all"]) == sum(
        cell["tokens"] for task, kinds in table.items() if task != "all" for cell in kinds.values())
    assert json.loads((tmp_path / "t.json").read_text()) == table
    assert "ln 10" in capsys.readouterr().out
