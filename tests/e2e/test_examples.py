"""The examples in examples/ run against the real thing."""

from __future__ import annotations

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_client_example_against_a_focus_server(sdar_focus_server, capsys):
    client = runpy.run_path(str(EXAMPLES / "client.py"))
    client["main"](sdar_focus_server.base_url)
    out = capsys.readouterr().out
    assert "[server alpha]" in out and "[eviction off]" in out and "[chat]" in out
    lines = out.splitlines()
    stats_after_eviction_off = lines[next(i for i, line in enumerate(lines) if line.startswith("[eviction off]")) + 1]
    assert " evicted=0 " in stats_after_eviction_off, stats_after_eviction_off


def test_offline_engine_example(tiny_sdar):
    out = subprocess.run([sys.executable, str(EXAMPLES / "offline_engine.py"), "--model-path", str(tiny_sdar)],
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SGLANG_USE_CPU_ENGINE": "1"}, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if "'forwards'" in line]
    assert len(lines) == 2
