"""sglang_focus.step_timing: off by default, atomic snapshots, differences between snapshots."""

import json
import time

from sglang_focus.step_timing import SECTIONS, StepTimes, read_snapshot, snapshot_difference


def test_disabled_timer_writes_nothing(tmp_path):
    timer = StepTimes(None)
    with timer.section("step"):
        pass
    timer.end_step(evictable=True)
    assert not timer.enabled and timer.steps == 0 and list(tmp_path.iterdir()) == []


def test_sections_accumulate_and_every_step_rewrites_the_file(tmp_path):
    path = tmp_path / "times.json"
    timer = StepTimes(path)
    for evictable in (True, False):
        with timer.section("step"):
            with timer.section("selection"):
                time.sleep(0.01)
        timer.end_step(evictable=evictable)
    saved = json.loads(path.read_text())
    assert saved["steps"] == 2 and saved["evictable_steps"] == 1
    assert saved["seconds"]["step"] >= saved["seconds"]["selection"] >= 0.02
    assert set(saved["seconds"]) == set(SECTIONS)
    assert not (tmp_path / "times.json.partial").exists()


def test_snapshot_difference_counts_only_the_interval(tmp_path):
    path = tmp_path / "times.json"
    assert read_snapshot(path)["steps"] == 0, "a missing file reads as zeros"
    timer = StepTimes(path)
    timer.end_step()
    before = read_snapshot(path)
    with timer.section("plan"):
        time.sleep(0.005)
    timer.end_step(evictable=True)
    diff = snapshot_difference(read_snapshot(path), before)
    assert diff["steps"] == 1 and diff["evictable_steps"] == 1 and diff["seconds"]["plan"] >= 0.005
    assert diff["seconds"]["step"] == 0.0
