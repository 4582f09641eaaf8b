"""bench.throughput and bench.accuracy with `--audit-every` on the small task model (models/sdar-tasks): the focus arm reports its audited
recall, an arm without the option reports none."""

from __future__ import annotations

import json

import pytest

from sglang_focus.bench import accuracy, throughput

pytestmark = pytest.mark.e2e


def check_audited(record: dict) -> None:
    assert record["audited_steps"] > 0
    assert record["audit_decodable"] >= record["audit_evicted_decodable"] >= 0
    assert 0.0 <= record["audit_recall"] <= 1.0
    assert record["audit_recall"] == pytest.approx(1 - record["audit_evicted_decodable"] / record["audit_decodable"])


def test_throughput_reports_the_audited_recall_of_the_focus_arm(tmp_path, bundled_model):
    result = throughput.main(["--model-path", str(bundled_model), "--arms", "delayed", "focus", "--batch-sizes", "4", "--repeats", "1",
                              "--max-new-tokens", "32", "--min-batch-tokens", "0", "--audit-every", "1",
                              "--out", str(tmp_path), "--log-dir", str(tmp_path)])
    delayed, focus = result["records"]
    check_audited(focus)
    assert focus["evicted"] == 0, "every evicting step audited: nothing evicted"
    assert "audit_recall" not in delayed
    assert json.loads((tmp_path / "throughput.json").read_text())["audit_every"] == 1


def test_accuracy_reports_the_audited_recall_of_the_focus_arm(tmp_path, capsys, bundled_model):
    result = accuracy.main(["--model-path", str(bundled_model), "--arms", "focus", "--n", "10", "--max-running", "8", "--min-batch-tokens", "0",
                            "--audit-every", "2", "--out", str(tmp_path), "--log-dir", str(tmp_path)])
    (focus,) = result["records"]
    check_audited(focus)
    assert "focus: audited recall" in capsys.readouterr().out
    assert json.loads((tmp_path / "accuracy.json").read_text())["audit_every"] == 2
