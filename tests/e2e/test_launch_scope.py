"""FOCUS's launch refusals and its paged-planning switch apply to FOCUS launches only: a stock dLLM server started
with settings FOCUS refuses still starts and decodes."""

from __future__ import annotations

import pytest

from sglang_focus.bench.local_server import LocalServer
from sglang_focus.compat import FLASHINFER_PAGED_ENV

pytestmark = pytest.mark.e2e


def test_a_stock_server_with_settings_focus_refuses_still_serves(tiny_sdar, tmp_path):
    # Both refused under FOCUS: pipeline parallelism (stock dLLM resolution folds it back to 1) and FlashInfer's
    # ragged planning switched on explicitly.
    server = LocalServer(tiny_sdar, ["--dllm-algorithm", "LowConfidence", "--pp-size", "2"],
                         log_path=tmp_path / "server.log", env={FLASHINFER_PAGED_ENV: "0"})
    with server:
        resp = server.generate({"text": "hello", "sampling_params": {"max_new_tokens": 8, "temperature": 0}})
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["output_ids"]) == 8
