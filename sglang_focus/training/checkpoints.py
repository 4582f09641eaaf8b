"""The checkpoints shipped in the repository's `models/` folder, and the one every tool uses by default.

Imports nothing but the standard library (the benchmarks run from an uninstalled checkout without SGLang).
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
# The embedded default: what `make demo`, bench.throughput, bench.accuracy, analysis.decodability and
# examples/load_test.py serve or decode unless given --model-path, and whose shape bench.forward's "bundled"
# preset times. Its successor in training is MODELS_DIR / "sdar-tasks-b32" (see its model card).
EMBEDDED_DEFAULT = MODELS_DIR / "sdar-tasks"
