"""Focus.configure_server_args: CUDA graphs off, FDFO required (checked where SGLang resolves the launch)."""

from __future__ import annotations

import json
import subprocess
import sys

RESOLVE = """
import json, sys
from sglang.srt.plugins import load_plugins; load_plugins()
from sglang.srt.server_args import ServerArgs
from sglang.srt.arg_groups.overrides import resolving_view
out = {}
for name, fdfo in (("fdfo", True), ("sync", False)):
    sa = ServerArgs(model_path=sys.argv[1], dllm_algorithm="Focus", dllm_fdfo=fdfo, max_total_tokens=4096)
    try:
        sa.resolve_once()
        graphs = resolving_view(sa).cuda_graph_config
        out[name] = [str(graphs.prefill.backend), str(graphs.decode.backend)]
    except Exception as exc:
        out[name] = f"{type(exc).__name__}: {exc}"
print("RESULT " + json.dumps(out))
"""


def test_focus_disables_cuda_graphs_and_requires_fdfo(tiny_sdar):
    proc = subprocess.run([sys.executable, "-c", RESOLVE, str(tiny_sdar)], capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert all("disabled" in backend.lower() for backend in result["fdfo"]), result
    assert "FDFO mode only" in result["sync"]
